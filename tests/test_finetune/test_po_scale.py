"""Preference optimization at scale: sampling sharded over workers and merged, training under `accelerate launch`
(two CPU processes, DeepSpeed ZeRO-2 and ZeRO-3), and the staged command line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ft_helpers import FORKING, preference_run
from safetensors.torch import load_file
from transformers import TrainingArguments
from trl import ModelConfig

from eval.pairs import PairsArguments
from eval.pairs import main as make_pairs
from finetune.prefopt import PrefOptArguments, main, train_pairs
from finetune.prefopt import parser as prefopt_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    preference_run(root)
    return root


def flags(run: Path, *extra: str) -> list[str]:
    policy = str(run / "models" / "pasta-sft")
    return ["--run_dir", str(run), "--model_name_or_path", policy, "--proxy_reference", policy, "--num_prompts", "4",
            "--samples", "3", "--max_new_tokens", "48", "--lambdas", "1", "inf", "--report_to", "none", *extra]


def test_sharded_sampling_and_merge_give_the_pairs_of_one_run(run, capsys):
    policy = str(run / "models" / "pasta-sft")
    one = PairsArguments(run_dir=str(run), out=str(run / "one"), num_prompts=4, samples=3, max_new_tokens=48,
                         lambdas=[1.0, math.inf], proxy_reference=policy)
    make_pairs(one)
    folder = run / "prefopt" / "round-1"
    for i in range(2):  # one worker per GPU: each draws every 2nd prompt into its own file, judges nothing
        assert main(flags(run, "--stage", "sample", "--shard", f"{i}/2")) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["samples.shard-0-of-2.jsonl", "samples.shard-1-of-2.jsonl"]

    shard1 = folder / "samples.shard-1-of-2.jsonl"
    kept = shard1.read_text()
    shard1.unlink()
    capsys.readouterr()
    assert main(flags(run, "--stage", "sample", "--merge_shards", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard 1/2" in err[0] and "missing" in err[0] and "--shard 1/2" in err[0], err
    shard1.write_text(kept + (folder / "samples.shard-0-of-2.jsonl").read_text())  # worker 0's prompts again
    assert main(flags(run, "--stage", "sample", "--merge_shards", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlap" in err[0] and "belongs to shard 0/2" in err[0], err
    shard1.write_text(kept)
    assert not list(folder.glob("pairs-*"))  # a refused merge writes no pairs

    assert main(flags(run, "--stage", "sample", "--merge_shards", "2")) == 0
    for name in ("1", "inf"):
        merged = (folder / f"pairs-l{name}.jsonl").read_bytes()
        assert merged == (run / "one" / f"pairs-l{name}.jsonl").read_bytes(), name
    pairs = [json.loads(line) for line in (folder / "pairs-linf.jsonl").read_text().splitlines()]
    assert pairs, "the policy must give pairs for the comparison to mean something"
    for pair in pairs:  # TRL's conversational preference format, with the layouts of the drawn tokens
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
        assert pair["rejected"][0]["role"] == "assistant" and pair["chosen_layout"]["targets"]


def write_pairs(path: Path) -> Path:
    answers = [FORKING, " one two", " one", FORKING.replace("one", "three")]
    rows = [{"prompt": [{"role": "user", "content": f"List {i} things"}],
             "chosen": [{"role": "assistant", "content": answers[i]}],
             "rejected": [{"role": "assistant", "content": answers[(i + 1) % 4]}]} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# two optimizer steps (two epochs of the four pairs in one batch): the second step's loss depends on the first's
# update, so on the gradients reduced over both processes; batches of every pair at once make it order-free. Plain
# SGD without clipping: the update is the gradient itself (Adam's first step is about its sign, and would hide a
# gradient summed instead of averaged)
TRAIN = {"num_train_epochs": 2, "logging_steps": 1, "optim": "sgd", "learning_rate": 0.01, "max_grad_norm": 0,
         "save_strategy": "no", "report_to": "none", "seed": 42}


@pytest.mark.slow  # DeepSpeed builds its CPU communication op on first use (about 2 minutes, then cached)
@pytest.mark.parametrize("zero", ["zero2", "zero3"])  # ZeRO-3: the paper recipe's; the reference pass gathers layers
def test_two_processes_under_zero_train_as_one(tmp_path, zero):
    policy = preference_run(tmp_path)
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    training = TrainingArguments(output_dir=str(tmp_path / "ck"), per_device_train_batch_size=4, use_cpu=True, **TRAIN)
    one = train_pairs(policy, pairs, tmp_path / "models" / "one", PrefOptArguments(), training,
                      ModelConfig(model_name_or_path=policy))

    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--config_file", f"configs/accelerate/{zero}.yaml", "--num_processes", "2",
           "-m", "finetune.prefopt", "--stage", "train", "--pairs", str(pairs), "--output_name", "two",
           "--model_name_or_path", policy, "--run_dir", str(tmp_path), "--per_device_train_batch_size", "2",
           "--bf16", "false", "--disable_tqdm", "true", *[f"--{k}={v}" for k, v in TRAIN.items()],
           # without a GPU, accelerate picks no backend for a DeepSpeed job and counts one process; gloo it counts
           "--ddp_backend", "gloo", "--save_strategy", "steps", "--save_steps", "2"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("prefopt: ") == 1  # the first process alone reports (and writes)
    states = (tmp_path / "checkpoints" / "two" / "checkpoint-2" / "global_step2").glob("*optim_states.pt")
    assert sorted(p.name[:15] for p in states) == ["zero_pp_rank_0_", "zero_pp_rank_1_"]  # ZeRO over both

    two = json.loads((tmp_path / "models" / "two" / "prefopt.json").read_text())
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-3)
    a, b = (load_file(str(tmp_path / "models" / n / "model.safetensors")) for n in ("one", "two"))
    assert a.keys() == b.keys()
    moved = load_file(str(Path(policy) / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name  # the same update, from the reduced gradients
    assert any(not torch.equal(a[n], moved[n]) for n in a)  # and training did move the model


def test_staged_command_line_parses_and_refuses_misuse(tmp_path, capsys):
    parser = prefopt_parser()
    args, training, _ = parser.parse_args_and_config(
        ["--stage", "sample", "--round", "2", "--shard", "3/8", "--output_dir", str(tmp_path)])
    assert (args.stage, args.round, args.shard, args.merge_shards) == ("sample", 2, "3/8", None)
    args, *_ = parser.parse_args_and_config(["--stage", "train", "--round", "1", "--output_dir", str(tmp_path)])
    assert args.stage == "train" and args.pairs is None
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--stage", "merge"])
    capsys.readouterr()
    helped = parser.format_help()  # what --help prints
    assert all(f in helped for f in ("--stage {all,sample,train}", "--round", "--shard", "--merge_shards"))
    assert "--stage sample --round k --shard i/n" in helped  # the staged recipe, in the description

    for argv, says in ((["--stage", "train", "--shard", "0/2"], "belong to --stage sample"),
                       (["--stage", "sample", "--shard", "0/2", "--merge_shards", "2"], "separate runs"),
                       (["--stage", "sample", "--shard", "2/2"], "0 <= i < n"),
                       (["--stage", "train", "--pairs", "p.jsonl"], "needs --output_name")):
        assert main(["--run_dir", str(tmp_path / "run"), "--report_to", "none", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (argv, err)


def test_a_round_after_the_first_needs_its_models(tmp_path, capsys):
    assert main(["--run_dir", str(tmp_path), "--stage", "sample", "--round", "2", "--lambdas", "1",
                 "--report_to", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prefopt-l1-r1 is not trained yet" in err[0], err
    assert main(["--run_dir", str(tmp_path), "--stage", "train", "--round", "1", "--lambdas", "1",
                 "--report_to", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pairs-l1.jsonl: no such pairs file" in err[0], err


def test_stage_all_refuses_many_processes(monkeypatch):
    from finetune.prefopt import check_stage

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 8))
    training = TrainingArguments(output_dir="unused", report_to="none")
    with pytest.raises(ValueError, match="would run once in each of the 8 processes"):
        check_stage(PrefOptArguments(stage="all"), training)
    check_stage(PrefOptArguments(stage="train"), training)  # training is what accelerate launches


@pytest.mark.parametrize("recipe", ["gemma-7b-prefopt.yaml", "gemma-7b-prefopt-lora.yaml"])
def test_paper_recipes_parse_for_every_stage(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # bf16 on a GPU, which this machine may lack
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    for stage in (["--stage", "sample", "--round", "2", "--shard", "0/8"], ["--stage", "train", "--round", "2"]):
        args, training, model_args = prefopt_parser().parse_args_and_config(
            ["--config", f"configs/paper/{recipe}", *stage])
        assert args.stage == stage[1] and args.round == 2 and training.bf16
        assert model_args.use_peft == recipe.endswith("-lora.yaml")
    # one pair per GPU on 8 GPUs, or 8 accumulated on one: the same effective batch
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps * (
        1 if model_args.use_peft else 8) == 8

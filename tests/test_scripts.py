"""The cluster launchers: valid bash, and in --dry-run they print the commands they would run; the SLURM
template's requeue trap, run against stub srun and scontrol commands."""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "scripts").glob("*.sbatch"))


def sh(*args, env=None, cwd=ROOT):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert sh("-n", str(script)).returncode == 0


def test_single_node_training_always_asks_to_resume(tmp_path):
    """finetune resumes from the newest checkpoint-N of each variant when there is one, else starts afresh: the
    launcher always asks, so a rerun after a preemption continues whatever the recipe's variant or output_dir."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {tmp_path}/run\nvariant: both\n")
    out = sh("scripts/train_node.sh", str(recipe), "zero3", "--dry-run", env={"GPUS": "8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"+ accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 "
                                  f"-m finetune --config {recipe} --resume_from_checkpoint true")
    out = sh("scripts/train_node.sh", str(recipe), "zero3", "--dry-run", "--resume_from_checkpoint", "ckpt",
             env={"GPUS": "8"})  # a checkpoint named on the command line wins
    assert out.stdout.strip().endswith("--resume_from_checkpoint ckpt") and out.stdout.count("--resume") == 1


def test_slurm_template_launches_zero3_on_every_node():
    out = sh("scripts/train_slurm.sbatch", "configs/paper/gemma-7b-sft.yaml", env={"DRY_RUN": "1", "SLURM_NNODES": "4"})
    assert out.returncode == 0, out.stderr
    assert "srun" in out.stdout and "configs/accelerate/multi_node.yaml" in out.stdout
    assert "--num_machines\\ 4" in out.stdout and "--num_processes\\ 32" in out.stdout


def test_sharded_eval_starts_n_workers_then_merges():
    out = sh("scripts/shard_eval.sh", "configs/demo/eval.yaml", "3", "--dry-run")
    lines = out.stdout.strip().splitlines()
    assert lines[:3] == [f"+ python -m eval --config configs/demo/eval.yaml --shard {i}/3" for i in range(3)]
    assert lines[3] == "+ python -m eval --config configs/demo/eval.yaml --merge_shards 3"


def test_vllm_server_stays_on_loopback_without_a_key():
    out = sh("scripts/serve_vllm.sh", "some/model", "--dry-run")
    assert "--host 127.0.0.1" in out.stdout and "--enable-prefix-caching" in out.stdout
    assert "--tensor-parallel-size 1" in out.stdout  # a 7B model: one GPU
    wide = sh("scripts/serve_vllm.sh", "some/model", "--dry-run", env={"HOST": "0.0.0.0"})
    assert wide.returncode == 2 and "VLLM_API_KEY" in wide.stderr
    keyed = sh("scripts/serve_vllm.sh", "some/model", "--dry-run", env={"HOST": "0.0.0.0", "VLLM_API_KEY": "s3cret"})
    assert keyed.returncode == 0 and "s3cret" not in keyed.stdout  # vLLM reads it from the environment
    tp = sh("scripts/serve_vllm.sh", "big/model", "8000", "--dry-run", env={"TP": "8", "VLLM": ".venv-vllm/bin/vllm"})
    assert tp.stdout.startswith("+ .venv-vllm/bin/vllm serve big/model") and "--tensor-parallel-size 8" in tp.stdout


def test_paper_recipes_checkpoint_by_steps():
    import yaml

    for name in ("gemma-7b-sft.yaml", "gemma-7b-sft-baseline.yaml"):
        recipe = yaml.safe_load((ROOT / "configs" / "paper" / name).read_text())
        assert recipe["save_strategy"] == "steps" and 0 < recipe["save_steps"] <= 1000, name
        assert recipe["save_total_limit"] >= 2, name  # a checkpoint torn by a kill still leaves a whole one


def test_slurm_template_passes_extra_flags_quoted():
    out = sh("scripts/train_slurm.sbatch", "configs/paper/gemma-7b-sft.yaml", "--run_name", "a b",
             env={"DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr
    srun = shlex.split(out.stdout.removeprefix("+ "))
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "bash"]
    inner = shlex.split(srun[-1])  # what each node runs
    assert inner[inner.index("finetune"):] == ["finetune", "--config", "configs/paper/gemma-7b-sft.yaml", "--run_name",
                                               "a b", "--resume_from_checkpoint", "true"]


STUB_SRUN = """#!/bin/bash
echo "$@" > "$STUBS/srun.args"
trap 'kill $! 2>/dev/null; echo TERM >> "$STUBS/srun.log"; exit 143' TERM
echo $$ > "$STUBS/srun.pid"
sleep "${SRUN_SLEEP:-30}" & wait $!
exit "${SRUN_EXIT:-0}"
"""
STUB_SCONTROL = """#!/bin/bash
echo "$*" >> "$STUBS/scontrol.log"
if [ "$1" = show ]; then echo node1; fi
"""


def slurm_job(tmp_path, **env):
    """train_slurm.sbatch as SLURM would start it, with stub srun and scontrol (srun sleeps until signalled)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin", "STUBS": str(stubs), "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NNODES": "2", **env}
    job = subprocess.Popen(["bash", "scripts/train_slurm.sbatch", "configs/paper/gemma-7b-sft.yaml"], cwd=ROOT,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return job, stubs


def until(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_slurm_requeue_trap_fires_while_srun_runs(tmp_path):
    job, stubs = slurm_job(tmp_path)
    try:
        until(lambda: (stubs / "srun.pid").exists() and (stubs / "srun.pid").read_text().strip())
        srun = int((stubs / "srun.pid").read_text())
        job.send_signal(signal.SIGUSR1)  # SLURM, 300 s before the time limit (--signal=B:USR1@300)
        scontrol = stubs / "scontrol.log"
        until(lambda: "requeue 4242" in scontrol.read_text())
        assert alive(srun) and job.poll() is None  # the trap ran while srun still ran; the script waits on
        os.kill(srun, signal.SIGTERM)  # SLURM ends the requeued job's step
        _, err = job.communicate(timeout=10)
    finally:
        job.kill()
    assert job.returncode == 143  # srun's own status, not the 138 (128 + USR1) of the interrupted wait
    assert "requeueing job 4242" in err
    assert "--resume_from_checkpoint true" in (stubs / "srun.args").read_text()  # the requeued job resumes


def test_slurm_sigterm_is_passed_on_to_srun_without_requeue(tmp_path):
    job, stubs = slurm_job(tmp_path)
    try:
        until(lambda: (stubs / "srun.pid").exists() and (stubs / "srun.pid").read_text().strip())
        job.send_signal(signal.SIGTERM)  # scancel, or a preemption
        _, err = job.communicate(timeout=10)
    finally:
        job.kill()
    assert job.returncode == 143 and (stubs / "srun.log").read_text().strip() == "TERM"
    assert "requeue" not in (stubs / "scontrol.log").read_text()


@pytest.mark.parametrize("status", [0, 3])
def test_slurm_script_exits_with_sruns_status(tmp_path, status):
    job, _ = slurm_job(tmp_path, SRUN_SLEEP="0", SRUN_EXIT=str(status))
    job.communicate(timeout=10)
    assert job.returncode == status


def smoke_commands(run_dir="runs/smoke"):
    """The (module, flags) of every command `scripts/smoke_gpu.sh RUN_DIR --dry-run` prints, in order."""
    out = sh("scripts/smoke_gpu.sh", run_dir, "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = [shlex.split(line.removeprefix("+ ")) for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert all(line[:2] == ["python", "-m"] for line in lines), lines
    return [(line[2], line[3:]) for line in lines]


def smoke_parsers():
    """Each stage's own TrlParser, as its entry point builds it."""
    from transformers import TrainingArguments
    from trl import ModelConfig, SFTConfig, TrlParser

    from data_gen.config import DataGenConfig
    from eval.run import EvalArguments
    from finetune.prefopt import PrefOptArguments
    from finetune.sft import FinetuneArguments

    return {"data_gen": TrlParser(DataGenConfig), "finetune": TrlParser((FinetuneArguments, SFTConfig, ModelConfig)),
            "finetune.prefopt": TrlParser((PrefOptArguments, TrainingArguments, ModelConfig)),
            "eval": TrlParser((EvalArguments,))}


def test_gpu_smoke_runs_every_stage_in_order_with_flags_that_parse(monkeypatch):
    """DRY_RUN prints the four stages in pipeline order; each command's flags parse with its stage's own parser
    (over its recipe), into the small run the script promises: the embedded model, one GPU in bf16, few steps."""
    commands = smoke_commands("runs/smoke-test")
    assert [module for module, _ in commands] == ["data_gen", "finetune", "finetune.prefopt", "eval"]
    monkeypatch.chdir(ROOT)  # the recipes' paths are relative to the repository
    # TrainingArguments refuses bf16 without a bf16 GPU: parse as on the GPU the script runs on
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    parsers = smoke_parsers()
    parsed = {module: parsers[module].parse_args_and_config(flags) for module, flags in commands}
    (data,) = parsed["data_gen"]
    data.check()
    assert (data.run_dir, data.teacher, data.max_examples, data.answer_model) == ("runs/smoke-test", "structural",
                                                                                  48, "smollm2-135m-instruct")
    args, sft, model = parsed["finetune"]
    assert (args.run_dir, args.variant, model.model_name_or_path) == ("runs/smoke-test", "both",
                                                                      "smollm2-135m-instruct")
    assert sft.bf16 and not sft.use_cpu and 0 < sft.max_steps <= 50 and sft.report_to in ("none", [], ["none"])
    po, training, policy = parsed["finetune.prefopt"]
    assert (po.rounds, po.lambdas, policy.model_name_or_path) == (1, [1.0], "runs/smoke-test/models/pasta-sft")
    assert po.samples * po.num_prompts <= 64 and training.bf16 and not training.use_cpu
    (ev,) = parsed["eval"]
    assert (ev.run_dir, ev.judge, ev.limit) == ("runs/smoke-test", "proxy", [8])


def test_gpu_smoke_refuses_to_run_without_a_gpu(tmp_path):
    out = sh("scripts/smoke_gpu.sh", str(tmp_path / "run"))  # PATH has no nvidia-smi here
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "smoke_gpu.sh: no GPU (nvidia-smi lists none); DRY_RUN=1 prints the commands"

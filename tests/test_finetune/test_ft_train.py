"""`python -m finetune` end to end on a tiny random model: LoRA and full, both variants, merge, resume, errors."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from ft_helpers import save_dataset, save_tiny_model
from safetensors.torch import load_file

from finetune.__main__ import main
from interpreter import TAG_PIECES, add_tag_tokens, has_tag_tokens, load_model

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--activation_checkpointing",
        "false", "--report_to", "none", "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-2",
        "--disable_tqdm", "true"]
LORA = ["--add_tag_tokens", "true", "--use_peft", "--lora_target_modules", "all-linear", "--lora_r", "4",
        "--lora_alpha", "8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    (root / "data").mkdir()
    return {"data": save_dataset(root / "data"), "model": save_tiny_model(root / "model", "llama", tied=True)}


def run(setup, run_dir, *extra):
    return main(["--run_dir", str(run_dir), "--dataset", setup["data"], "--model_name_or_path", setup["model"], *FAST,
                 *extra])


def tag_rows(setup):
    """The new tag tokens' embedding rows as training starts them (the mean of their plain-text pieces)."""
    model, tok = load_model(setup["model"])
    add_tag_tokens(tok, model)
    ids = [tok.convert_tokens_to_ids(p) for p in TAG_PIECES if p not in load_model(setup["model"])[1].get_vocab()]
    return ids, model.get_input_embeddings().weight[ids].detach().clone(), model


def test_lora_trains_new_tag_embeddings_and_merges_exactly(setup, tmp_path):
    from peft import PeftModel

    run(setup, tmp_path, *LORA)
    out = tmp_path / "models" / "pasta-sft"
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 2 and summary["lora"] and summary["tag_tokens_added"] > 0
    merged, tok = load_model(str(out))
    assert has_tag_tokens(tok)
    ids, before, base = tag_rows(setup)
    after = merged.get_input_embeddings().weight[ids]
    assert not torch.allclose(after, before, atol=1e-4)  # the new tokens' embeddings trained
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight  # still tied
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "checkpoints" / "pasta-sft")).eval()
    ids = torch.tensor([tok("Try these:<promise topic=\"a\" tokens=\"3\"/><async>x</async><sync/>")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4)


def test_full_finetune_of_both_variants(setup, tmp_path):
    run(setup, tmp_path, "--variant", "both", "--add_tag_tokens", "true")
    pasta, pasta_tok = load_model(str(tmp_path / "models" / "pasta-sft"))
    baseline, baseline_tok = load_model(str(tmp_path / "models" / "baseline-sft"))
    assert has_tag_tokens(pasta_tok) and not has_tag_tokens(baseline_tok)  # the control never sees a tag
    ids, before, _ = tag_rows(setup)
    assert not torch.allclose(pasta.get_input_embeddings().weight[ids], before, atol=1e-4)
    for name in ("pasta-sft", "baseline-sft"):
        summary = json.loads((tmp_path / "models" / name / "training.json").read_text())
        assert summary["steps"] == 2 and not summary["lora"] and summary["final_loss"] > 0
    assert json.loads((tmp_path / "models" / "baseline-sft" / "training.json").read_text())["tag_tokens_added"] == 0


def test_a_rerun_keeps_finished_models_unless_told_to_overwrite(setup, tmp_path, capsys):
    run(setup, tmp_path)
    weights = tmp_path / "models/pasta-sft/model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert "max_length" not in capsys.readouterr().err  # the default holds every example whole
    run(setup, tmp_path)
    assert weights.stat().st_mtime_ns == stamp and "already trained" in capsys.readouterr().err
    run(setup, tmp_path, "--overwrite")
    assert weights.stat().st_mtime_ns != stamp


def test_a_max_length_that_cuts_examples_says_so(setup, tmp_path, capsys):
    run(setup, tmp_path, "--max_length", "100")
    err = capsys.readouterr().err
    assert re.search(r"pasta-sft: warning: max_length 100 cuts [1-6] of 6 examples \(up to 1\d\d tokens long\): "
                     r"their ends, the end token included, are never trained; --max_length 1\d\d keeps them whole", err)


def test_dropping_long_examples_leaves_out_the_same_answers_of_both_variants(setup, tmp_path, capsys):
    rows = [json.loads(line) for line in (Path(setup["data"]) / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for i, row in enumerate(rows):  # the answer's length with tags, as data_gen measures it: two are long
        row["total_tokens"] = 500 if i < 2 else 20
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(setup, tmp_path, "--dataset", str(data), "--variant", "both", "--max_length", "100",
        "--long_examples", "drop")
    err = capsys.readouterr().err
    for name in ("pasta-sft", "baseline-sft"):  # the control's own answers are short, and it leaves out the same two
        assert json.loads((tmp_path / "models" / name / "training.json").read_text())["examples"] == 4
        assert re.search(name + r": left out 2 of 6 examples longer than max_length 100 with their tags "
                         r"\(up to 5\d\d tokens\)", err)


def test_train_layers_trains_only_the_top_of_the_stack(setup, tmp_path):
    run(setup, tmp_path, "--train_layers", "1")
    base = load_model(setup["model"])[0].state_dict()
    tuned = load_model(str(tmp_path / "models" / "pasta-sft"))[0].state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed)


def test_train_layers_with_tag_tokens_trains_only_the_new_rows(setup, tmp_path):
    """The tied head is untied: the new rows learn on the output side, the input side still reads each tag
    token as the text it stands for, and no old row or frozen layer moves."""
    run(setup, tmp_path, "--train_layers", "1", "--add_tag_tokens", "true")
    ids, before, base = tag_rows(setup)
    tuned = load_model(str(tmp_path / "models" / "pasta-sft"))[0]
    emb, head = tuned.get_input_embeddings().weight, tuned.get_output_embeddings().weight
    old = emb.shape[0] - len(ids)
    assert head is not emb and not tuned.config.tie_word_embeddings
    assert not torch.allclose(head[ids], before, atol=1e-4)  # the tag tokens learned where to be written
    assert torch.equal(emb[ids], before)  # and are still read as their text
    assert torch.equal(head[:old], base.get_input_embeddings().weight[:old])  # no old token moved
    assert torch.equal(emb[:old], base.get_input_embeddings().weight[:old])
    assert torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_tag_token_learning_rate_moves_the_new_rows_further(setup, tmp_path):
    ids, before, _ = tag_rows(setup)
    moved = {}
    for lr in ("1e-4", "1e-2"):
        run(setup, tmp_path / lr, "--train_layers", "1", "--add_tag_tokens", "true", "--learning_rate", "1e-4",
            "--tag_token_learning_rate", lr)
        tuned = load_model(str(tmp_path / lr / "models" / "pasta-sft"))[0]
        moved[lr] = (tuned.get_output_embeddings().weight[ids] - before).abs().max().item()
    assert moved["1e-2"] > 10 * moved["1e-4"] > 0


def refused(capsys, pattern, call, *args):
    """`call(*args)` exits 2, its last words on stderr one line that matches `pattern` (progress bars before it)."""
    capsys.readouterr()
    try:
        code = call(*args)
    except SystemExit as exit_:  # argparse's own refusals, and a recipe that cannot be read
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and re.search(pattern, err[-1]), err[-3:]
    assert err[-1].startswith("python -m finetune: error: ") and "Traceback" not in "".join(err)


def test_the_dataset_sets_the_tokenization(setup, tmp_path, capsys):
    """A dataset measured with tag tokens trains a student with them; a recipe that says otherwise is refused."""
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    (data / "stats.json").write_text(json.dumps({"tag_tokens": True}))
    main(["--run_dir", str(tmp_path), "--dataset", str(data), "--model_name_or_path", setup["model"], *FAST])
    assert has_tag_tokens(load_model(str(tmp_path / "models" / "pasta-sft"))[1])
    refused(capsys, r"tag_tokens=True, but add_tag_tokens is False", main,
            ["--run_dir", str(tmp_path / "b"), "--dataset", str(data), "--model_name_or_path", setup["model"],
             *FAST, "--add_tag_tokens", "false"])


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(setup, tmp_path):
    run(setup, tmp_path, *LORA)
    final = tmp_path / "models/pasta-sft/model.safetensors"
    straight = load_file(str(final))
    shutil.rmtree(tmp_path / "checkpoints/pasta-sft/checkpoint-2")  # as if stopped after step 1
    final.unlink()
    (tmp_path / "models/pasta-sft/training.json").unlink()  # written last: a killed run has none
    # a fresh start at this other learning rate would end elsewhere; resuming restores weights, optimizer and schedule
    run(setup, tmp_path, *LORA, "--resume_from_checkpoint", "true", "--learning_rate", "1e-3")  # picks checkpoint-1
    state = json.loads((tmp_path / "checkpoints/pasta-sft/checkpoint-2/trainer_state.json").read_text())
    assert state["global_step"] == 2 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    resumed = load_file(str(final))
    assert straight.keys() == resumed.keys()
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_errors_say_what_went_wrong_and_where(setup, tmp_path, capsys):
    refused(capsys, r"nowhere: not a run folder.*make dataset", main,
            ["--run_dir", str(tmp_path), "--dataset", str(tmp_path / "nowhere"), "--model_name_or_path",
             setup["model"], *FAST])
    refused(capsys, r"resume_from_checkpoint: .*nothing-here is not a checkpoint folder", run, setup, tmp_path,
            "--resume_from_checkpoint", str(tmp_path / "nothing-here"))
    refused(capsys, r"packing / padding_free would drop the 4D PASTA masks", run, setup, tmp_path, "--packing", "true")
    refused(capsys, r"python -m finetune: error: .*no-such\.yaml", main, ["--config", str(tmp_path / "no-such.yaml")])


def test_bf16_passes_train_in_float32_on_a_cpu_without_bf16_units(monkeypatch, capsys, tmp_path):
    from trl import SFTConfig

    from finetune import sft

    recipe = SFTConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to="none")
    monkeypatch.setattr(sft, "native_bf16", lambda: False)
    plain = sft.cpu_precision(recipe)
    assert not plain.bf16 and plain.mixed_precision == "no"
    assert "no bf16 units" in capsys.readouterr().err
    monkeypatch.setattr(sft, "native_bf16", lambda: True)
    assert sft.cpu_precision(recipe).bf16

"""Every entry point answers --help (argparse formats each option's help text, so a stray % breaks it)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


MODULES = ["data_gen", "finetune", "finetune.check", "finetune.prefopt", "eval", "eval.pairs", "interpreter"]


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:")


@pytest.mark.parametrize("module", ["data_gen", "finetune", "finetune.check", "finetune.prefopt", "eval", "eval.pairs"])
def test_a_missing_recipe_is_one_line(module, tmp_path):
    out = subprocess.run([sys.executable, "-m", module, "--config", str(tmp_path / "nope.yaml")], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"python -m {module}: error: {tmp_path / 'nope.yaml'}: No such file or directory"]


def _entry(module: str):
    """The entry point of `python -m module`, called in this process."""
    import importlib

    return {"data_gen": lambda: importlib.import_module("data_gen.cli").main,
            "finetune": lambda: importlib.import_module("finetune.__main__").main,
            "finetune.prefopt": lambda: importlib.import_module("finetune.prefopt").main,
            "eval": lambda: importlib.import_module("eval.run").cli}[module]()


RECIPES = [("data_gen", "configs/demo/dataset.yaml"),
           ("data_gen", "configs/paper/dataset-slimorca.yaml"),
           ("finetune", "configs/demo/smollm2-sft.yaml"),
           ("finetune", "configs/paper/gemma-7b-sft.yaml"), ("finetune", "configs/paper/gemma-7b-sft-baseline.yaml"),
           ("finetune.prefopt", "configs/demo/smollm2-prefopt.yaml"),
           ("finetune.prefopt", "configs/paper/gemma-7b-prefopt.yaml"),
           ("eval", "configs/demo/eval.yaml"), ("eval", "configs/demo-full/eval.yaml"),
           ("eval", "configs/paper/eval-alpaca.yaml")]


@pytest.mark.parametrize("module, recipe", RECIPES)
def test_a_dry_run_parses_the_recipe_and_runs_nothing(module, recipe, capsys, monkeypatch, tmp_path):
    """Every recipe parses (a GPU recipe too, on this CPU) and --dry_run prints its settings without running."""
    monkeypatch.chdir(ROOT)
    assert _entry(module)(["--config", recipe, "--dry_run", "--run_dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"python -m {module}: dry run") and f"run_dir: '{tmp_path / 'run'}'" in out
    assert not (tmp_path / "run").exists()  # nothing ran: no run folder


@pytest.mark.parametrize("module, recipe, shown", [
    # `limit: 16` in an eval recipe is one limit for every prompt set, as `--limit 16` is
    ("eval", "prompts: [heldout, mt-bench]\nlimit: 16\n", ["limit: [16]"]),
    # the rule holds in the one parser every stage shares, and leaves TRL's own reading of a list setting (LoRA's
    # `all-linear`, which PEFT wants as a string) as it is
    ("finetune.prefopt", "lambdas: 1\nuse_peft: true\nlora_target_modules: all-linear\n",
     ["lambdas: [1]", "lora_target_modules: 'all-linear'"]),
])
def test_a_recipe_may_give_one_value_for_a_list_setting(module, recipe, shown, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    assert _entry(module)(["--config", str(path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    for line in shown:
        assert line in out

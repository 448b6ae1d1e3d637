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

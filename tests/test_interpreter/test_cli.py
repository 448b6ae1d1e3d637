import json
import subprocess
import sys

import pytest

VALID = 'Tips:<promise topic="sleep" tokens="20"/><async>\n1. Sleep</async><sync/>\nDone'


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "interpreter", *args], input=stdin, capture_output=True,
                          text=True)


def test_validate_prints_stats_and_exits_zero(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text(VALID)
    out = run("validate", str(path))
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"blocks": 1, "syncs": 1}


def test_validate_reports_line_and_column_and_exits_one(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("fine\nthen <sync> here")
    out = run("validate", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.strip() == f"{path}:2:6: a sync is self-closing: write <sync/> [sync-not-self-closing]"
    assert len(out.stderr.strip().splitlines()) == 1


def test_strip_prints_exact_stitched_text_from_stdin():
    out = run("strip", "-", stdin=VALID)
    assert out.returncode == 0
    assert out.stdout == "Tips:\n1. Sleep\nDone"  # no newline added
    assert run("strip", "-", stdin="x</async>").returncode == 1


def test_missing_file_is_one_clear_line(tmp_path):
    out = run("strip", str(tmp_path / "nope.txt"))
    assert out.returncode == 2
    assert "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_unknown_model_is_one_clear_line(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text(VALID)
    out = run("validate", str(path), "--tokenizer", "nobody/no-such-model")
    assert out.returncode == 2
    assert out.stderr.startswith("error: model 'nobody/no-such-model' is not a local folder")
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_validate_with_embedded_tokenizer_reports_costs(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text(VALID)
    out = run("validate", str(path), "--tokenizer", "smollm2-135m-instruct")
    stats = json.loads(out.stdout)
    assert stats["blocks"] == 1 and stats["sequential_tokens"] > 0
    assert stats["parallel_steps"] > 0 and "theoretical_speedup" in stats and "parallelism" in stats


def test_flags_take_both_spellings():
    from interpreter.cli import build_parser

    dashed = build_parser().parse_args(["generate", "--prompt", "x", "--max-new-tokens", "7", "--stop-loops"])
    underscored = build_parser().parse_args(["generate", "--prompt", "x", "--max_new_tokens", "7", "--stop_loops"])
    assert vars(dashed) == vars(underscored) and dashed.max_new_tokens == 7 and dashed.stop_loops

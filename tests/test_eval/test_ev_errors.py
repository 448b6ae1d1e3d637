"""What a user can get wrong in what eval reads is one line on stderr, naming the file (and line), and exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.run import cli
from pipeline.jsonl import JsonlError, read_rows

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv) -> str:
    """Runs the CLI and returns its one line of stderr, checking that it failed with status 2."""
    assert cli([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _prompts(tmp_path, body: bytes) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_bytes(body)
    return path


def _rows(*rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize("body, message", [
    (_rows({"id": "a", "instruction": "x"}, {"id": "a", "instruction": "y"}), ":2: duplicate id 'a', first on line 1"),
    (_rows({"instruction": "x"}, {"instruction": "y"}, {"instruction": "x"}),
     ":3: duplicate instruction, first on line 1"),
    (_rows({"id": 7, "instruction": "x"}, {"id": "7", "instruction": "y"}),
     ":2: duplicate id '7', first on line 1 as 7"),
    (_rows({"instruction": "x"}) + b'{"instruction": "y"\n', ":2: not JSON (Expecting ',' delimiter at column 20)"),
    (_rows({"instruction": None}), ":1: 'instruction' must be non-empty text, not null"),
    (_rows({"id": "q"}), ":1: the row has no 'instruction'"),
    (_rows(["x"]), ":1: a row must be a JSON object, not a list"),
    ('{"instruction": "café"}\n'.encode("latin-1"), ":1: not UTF-8 text (byte 0xe9 at column 21)"),
    (b"", ": no prompts in the file"),
], ids=["duplicate-id", "duplicate-instruction", "int-and-text-id", "bad-json", "null-instruction",
        "no-instruction", "not-an-object", "latin-1", "empty"])
def test_a_malformed_prompt_file_is_one_line_naming_file_and_line(tmp_path, capsys, body, message):
    path = _prompts(tmp_path, body)
    err = run(capsys, "--run_dir", tmp_path / "run", "--prompts", path)
    assert err.startswith(f"python -m eval: error: {path}{message}")


def test_two_prompt_sets_may_not_give_one_id_two_instructions(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_rows({"id": 1, "instruction": "x"}))
    b.write_bytes(_rows({"id": "1", "instruction": "y"}))
    assert run(capsys, "--run_dir", tmp_path / "run", "--prompts", a, b) == \
        f"python -m eval: error: {b}: id '1' names another instruction in {a}; give the prompts of one run distinct ids"


def test_a_good_prompt_file_still_reads(tmp_path):
    from eval.prompts import load_prompts

    path = _prompts(tmp_path, b"\xef\xbb\xbf" + _rows({"id": 7, "instruction": "x", "category": None},
                                                      {"instruction": "y", "category": "c"}) + b"\n")
    rows = load_prompts(str(path))
    assert [(r["id"], r["instruction"], r["category"]) for r in rows][0] == ("7", "x", "")
    assert len(rows) == 2 and rows[1]["category"] == "c"


def test_the_module_exits_2_with_one_line(tmp_path):
    path = _prompts(tmp_path, _rows({"id": "a", "instruction": "x"}, {"id": "a", "instruction": "y"}))
    out = subprocess.run([sys.executable, "-m", "eval", "--run_dir", str(tmp_path / "run"), "--prompts", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr == f"python -m eval: error: {path}:2: duplicate id 'a', first on line 1\n"


def test_a_missing_config_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    assert run(capsys, "--config", path) == f"python -m eval: error: {path}: No such file or directory"


@pytest.mark.parametrize("yaml_text, message", [("limt: 3\n", "Unknown arguments from config file: ['--limt', '3']"),
                                                ("methods: [pasta\n", "while parsing a flow sequence")],
                         ids=["unknown-key", "bad-yaml"])
def test_a_broken_config_file_names_it(tmp_path, capsys, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    err = run(capsys, "--config", path)
    assert err.startswith(f"python -m eval: error: {path}: ") and message in err


def _cached(tmp_path, body: bytes) -> list:
    """eval's argv with a baseline that is not on this machine, after writing its generations cache."""
    prompts = _prompts(tmp_path, _rows({"id": "a", "instruction": "x"}))
    gens = tmp_path / "run" / "eval" / "generations"
    gens.mkdir(parents=True)
    (gens / "sequential--smollm2-x.jsonl").write_bytes(body)
    return ["--run_dir", tmp_path / "run", "--prompts", prompts, "--baseline_model", "smollm2-x",
            "--methods", "sequential"]


@pytest.mark.parametrize("body, message", [
    (_rows({"prompt_id": "b"}) + b'{"prompt_id": "c"\n' + _rows({"prompt_id": "d"}),
     ":2: broken row (Expecting ',' delimiter at column 18); delete that line and its row is made again"),
    (_rows({"prompt_id": "b"}, "b"), ":2: a row must be a JSON object, not text"),
    (_rows({"prompt_id": "b"}) + '{"prompt_id": "é"}\n'.encode("latin-1"), ":2: broken row (not UTF-8 at column 16)"),
], ids=["bad-json", "not-an-object", "latin-1"])
def test_a_broken_generations_cache_names_file_and_line(tmp_path, capsys, body, message):
    err = run(capsys, *_cached(tmp_path, body))
    cache = tmp_path / "run/eval/generations/sequential--smollm2-x.jsonl"
    assert err.startswith(f"python -m eval: error: {cache}{message}")


def test_a_last_line_cut_by_a_kill_is_no_error(tmp_path, capsys):
    argv = _cached(tmp_path, _rows({"prompt_id": "b"}) + b'{"prompt_id": "c", "te')
    assert "model 'smollm2-x' is not a local folder" in run(capsys, *argv)  # read the cache, went on to the model
    path = tmp_path / "j.jsonl"
    path.write_bytes(_rows({"key": 1}) + b'{"key": 2, "pref')
    assert list(read_rows(path)) == [{"key": 1}]
    path.write_bytes(_rows({"key": 1}) + b'{"key": 2, "pref\n' + _rows({"key": 3}))
    with pytest.raises(JsonlError, match=r"j\.jsonl:2: broken row"):
        list(read_rows(path))


@pytest.mark.parametrize("flags, message", [
    (["--max_threads", "0"], "python -m eval: error: max_threads must be at least 1, not 0"),
    (["--run_dir", "RUN", "--baseline_model", "MODELS/nothing"],
     "python -m eval: error: no Baseline-SFT model at MODELS/nothing"),
    (["--shard", "3/2"], "python -m eval: error: --shard must be i/n with 0 <= i < n (e.g. 0/4), not '3/2'"),
], ids=["options", "no-model", "shard"])
def test_eval_s_other_errors_are_one_line(tmp_path, capsys, flags, message):
    prompts = _prompts(tmp_path, _rows({"id": "a", "instruction": "x"}))
    flags = [str(f).replace("RUN", str(tmp_path / "run")).replace("MODELS", str(tmp_path)) for f in flags]
    err = run(capsys, "--run_dir", tmp_path / "run", "--prompts", prompts, *flags)
    assert err.startswith(message.replace("MODELS", str(tmp_path)))

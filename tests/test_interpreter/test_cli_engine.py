"""generate, bench and serve from the command line, with a tiny model saved to disk."""

import json
import subprocess
import sys

import pytest
from tiny import bpe_tokenizer, tiny_model

STORED = ('Tips:<promise topic="a" tokens="10"/><async>\n1. Sleep well and long and deep</async>'
          '<promise topic="b" tokens="10"/><async>\n2. Drink water every day please</async><sync/>\nDone.')


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    tok = bpe_tokenizer()
    tiny_model("llama", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def run(*args):
    return subprocess.run([sys.executable, "-m", "interpreter", *args], capture_output=True, text=True, timeout=300)


def test_generate_json(model_dir):
    out = run("generate", "--model", model_dir, "--prompt", "Hi", "--max-new-tokens", "12", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"text", "stored", "tokens", "steps", "threads", "wall_time"} <= result.keys()
    assert sum(result["thread_tokens"]) <= 12


def test_generate_plain_prints_the_answer(model_dir):
    out = run("generate", "--model", model_dir, "--prompt", "Hi", "--max-new-tokens", "8", "--mode", "sequential",
              "--show-threads")  # not a terminal: falls back to plain text
    assert out.returncode == 0 and out.stdout.strip() and "sequential: " in out.stderr


def test_bench_writes_results(model_dir, tmp_path):
    data = tmp_path / "seqs.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"s{i}", "prompt": "Give tips", "annotated": STORED})
                              for i in range(3)))
    out = run("bench", "--model", model_dir, "--data", str(data), "--repeats", "1", "--warmup", "1",
              "--out", str(tmp_path / "bench"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert len(report["sequences"]) == 3 and report["sequences"][0]["theoretical_speedup"] > 0
    assert report["summary"]["all"]["geomean_efficiency"] > 0 and report["generate"]["ratio"] > 0
    assert "| s0 |" in (tmp_path / "bench.md").read_text()


def test_bench_rejects_bad_rows_with_file_and_line(model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "x", "annotated": "a<sync>"}) + "\n" + json.dumps({"prompt": "x"}))
    out = run("bench", "--model", model_dir, "--data", str(data))
    assert out.returncode == 1 and "sync-not-self-closing" in out.stderr


def test_serve_refuses_a_wide_bind_without_key(model_dir):
    out = run("serve", "--model", model_dir, "--host", "0.0.0.0")
    assert out.returncode != 0 and "--api-key" in out.stderr

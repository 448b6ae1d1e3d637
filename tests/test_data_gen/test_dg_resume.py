"""Kill `python -m data_gen` mid-run, start it again: the exact set of records, no duplicates, and no
request repeated for a reply the first run had written down."""

import json
import subprocess
import sys
import time

from dg_common import instruction_source, list_answer, read_jsonl, student_dir
from dg_replay import ReplayServer
from tiny import bpe_tokenizer

from data_gen import annotate
from interpreter import strip


def wait_until(condition, what: str, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def cached_answers(path) -> list[str]:
    """Answers whose reply the cache holds, reading only complete lines (a kill may tear the last)."""
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            out.append(strip(json.loads(line)["reply"]))
    return out


def test_a_killed_run_resumes_without_losing_or_repeating_anything(tmp_path):
    answers = [list_answer(i) for i in range(24)]
    recorded = {a: annotate(a, bpe_tokenizer()) for a in answers}
    run = tmp_path / "runs" / "t"
    with ReplayServer(recorded, delay=0.1) as server:
        args = [sys.executable, "-m", "data_gen", "--source", str(instruction_source(tmp_path, answers)),
                "--student", student_dir(tmp_path), "--run_dir", str(tmp_path / "runs" / "t"),
                "--teacher", "openai", "--openai_model", "recorded", "--openai_base_url", server.url,
                "--openai_concurrency", "3", "--no_parallel_share", "1"]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: server.served >= 8 or first.poll() is not None, "8 replies")
        first.kill()
        first.wait()
        assert first.returncode < 0, first.stderr.read().decode()[-2000:]  # killed, not finished
        first.stderr.close()
        assert not (run / "dataset").exists()
        done = cached_answers(run / "cache" / "teacher-openai_recorded.jsonl")
        asked_first = server.requested()
        second = subprocess.run(args, capture_output=True, text=True)
        assert second.returncode == 0, second.stderr[-2000:]
        asked_second = server.requested()[len(asked_first):]
    assert 0 < len(done) < 24 and len(set(done)) == len(done)
    assert sorted(asked_second) == sorted(set(answers) - set(done))  # only what the first run had not written
    assert all(asked_first.count(a) == 1 for a in done)
    rows = read_jsonl(run / "dataset" / "train.jsonl") + read_jsonl(run / "dataset" / "test.jsonl")
    assert sorted(r["stripped"] for r in rows) == sorted(answers) and len({r["id"] for r in rows}) == 24
    assert sorted(cached_answers(run / "cache" / "teacher-openai_recorded.jsonl")) == sorted(answers)

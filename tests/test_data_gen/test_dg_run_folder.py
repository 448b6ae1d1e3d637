"""One data_gen run per run folder: a second is refused at once with one line, the published dataset is
always one run's and whole, a dataset a stopped run left only as its backup is put back, and a failed
write (a full disk) names the stage and the file and loses nothing already written."""

import errno
import json
import os
import threading
from collections import Counter

from dg_common import instruction_source, list_answer, read_jsonl, student_dir
from dg_replay import ReplayServer
from test_dg_cli import build
from tiny import bpe_tokenizer

from data_gen import annotate, writer
from data_gen.cli import main
from pipeline import runfolder
from pipeline.dataset import load_splits
from pipeline.jsonl import JsonlCache

ANSWERS = [list_answer(i) for i in range(6)]


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("python -m data_gen: error:")]


def published(run) -> tuple[dict, str, str]:
    """(stats, train.jsonl, card) of the run's dataset, checked to be one whole build: Arrow, JSONL and
    stats agree."""
    out = run / "dataset"
    stats = json.loads((out / "stats.json").read_text())
    ds = load_splits(run)
    assert (len(ds["train"]), len(ds["test"])) == (stats["train"], stats["test"])
    assert read_jsonl(out / "train.jsonl") == list(ds["train"]) and read_jsonl(out / "test.jsonl") == list(ds["test"])
    return stats, (out / "train.jsonl").read_text(), (out / "README.md").read_text()


def test_a_second_run_on_a_busy_run_folder_is_refused_and_the_first_publishes_whole(tmp_path, capsys, monkeypatch):
    source = instruction_source(tmp_path, ANSWERS)
    run = tmp_path / "runs" / "t"
    publishing, go_on, codes = threading.Event(), threading.Event(), {}
    card = writer.card

    def card_held(stats, command):  # the first run waits here, halfway through writing its dataset
        if threading.current_thread() is first:
            publishing.set()
            go_on.wait(60)
        return card(stats, command)

    monkeypatch.setattr(writer, "card", card_held)
    first = threading.Thread(target=lambda: codes.update(first=build(tmp_path, source, "--test_size", "0.2")))
    first.start()
    try:
        assert publishing.wait(60)
        capsys.readouterr()
        codes["second"] = build(tmp_path, source, "--test_size", "0.5", "--max_blocks", "2")
        err = capsys.readouterr().err
    finally:
        go_on.set()
        first.join(60)
    assert codes == {"first": 0, "second": 2}
    lines = err.splitlines()
    assert len(lines) == 1 and lines == error_lines(err)
    assert str(run) in lines[0] and f"pid {os.getpid()}" in lines[0] and "started" in lines[0]
    stats, _, readme = published(run)
    assert stats["config"]["test_size"] == 0.2 and stats["config"]["max_blocks"] == 12
    assert "--test_size 0.2" in readme and "--test_size 0.5" not in readme
    assert sorted(p.name for p in run.iterdir()) == ["dataset"]  # no lock or temporary folder left behind


def test_the_run_lock_keeps_out_a_build_and_a_merge_but_not_a_worker(tmp_path, capsys):
    source = instruction_source(tmp_path, ANSWERS)
    run = tmp_path / "runs" / "t"
    with runfolder.hold(run, "data_gen") as lock:
        assert f"pid {os.getpid()}" in lock.read_text()
        assert build(tmp_path, source, "--shard", "0/2") == 0  # workers hold a lock of their own shard
        capsys.readouterr()
        for flags in ([], ["--merge_shards", "2"]):
            assert build(tmp_path, source, *flags) == 2
            err = capsys.readouterr().err
            assert len(err.splitlines()) == 1 and "is in use by another data_gen run" in err and str(run) in err
    assert not lock.exists()
    assert build(tmp_path, source) == 0


def test_a_dataset_left_only_as_its_backup_is_restored_before_anything_else(tmp_path, capsys):
    source = instruction_source(tmp_path, ANSWERS)
    run = tmp_path / "runs" / "t"
    assert build(tmp_path, source) == 0
    before = published(run)
    os.replace(run / "dataset", run / ".dataset.old")  # what a kill between the writer's two renames leaves
    (run / ".dataset.tmp-x").mkdir()
    (run / ".dataset.tmp-x" / "data.arrow").write_text("half")
    capsys.readouterr()
    assert build(tmp_path, tmp_path / "missing.jsonl") == 2  # this run fails, but only after the restore
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "restored" in err[0] and str(run / "dataset") in err[0]
    assert err[1].startswith("python -m data_gen: error: ") and "missing.jsonl" in err[1]
    assert published(run) == before
    assert sorted(p.name for p in run.iterdir()) == ["dataset"]


def test_a_full_disk_while_writing_the_dataset_names_stage_and_file_and_keeps_the_last_dataset(
        tmp_path, capsys, monkeypatch):
    source = instruction_source(tmp_path, ANSWERS)
    run = tmp_path / "runs" / "t"
    assert build(tmp_path, source) == 0
    before = published(run)

    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_jsonl", full)
    capsys.readouterr()
    assert build(tmp_path, source, "--test_size", "0.5") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("python -m data_gen: error: cannot write ") and "train.jsonl" in line and str(run) in line
    assert "No space left on device [ENOSPC]" in line
    assert published(run) == before
    assert sorted(p.name for p in run.iterdir()) == ["dataset"]  # the half-written new one is gone


def test_a_full_disk_while_caching_a_reply_names_the_cache_and_keeps_what_it_holds(tmp_path, capsys, monkeypatch):
    recorded = {a: annotate(a, bpe_tokenizer()) for a in ANSWERS}
    run = tmp_path / "runs" / "t"
    cache = run / "cache" / "teacher-openai_recorded.jsonl"
    fsync, calls = os.fsync, []

    def third_is_full(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    with ReplayServer(recorded) as server:
        def data_gen():
            return main(["--source", str(instruction_source(tmp_path, ANSWERS)), "--student", student_dir(tmp_path),
                         "--run_dir", str(run), "--teacher", "openai", "--openai_model", "recorded",
                         "--openai_base_url", server.url, "--openai_concurrency", "1", "--no_parallel_share", "1"])

        monkeypatch.setattr(os, "fsync", third_is_full)
        assert data_gen() == 2
        monkeypatch.undo()
        (line,) = error_lines(capsys.readouterr().err)
        assert line.startswith("python -m data_gen: error: cannot write ") and str(cache) in line and "[ENOSPC]" in line
        kept = JsonlCache(cache)
        assert len(kept) == 2 and kept.dropped == 0  # the two replies written before, and no torn line
        assert data_gen() == 0
    asked = Counter(server.requested())
    assert sorted(asked.values()) == [1, 1, 1, 1, 1, 2]  # the two cached replies are not asked again, the lost one is
    assert sorted(r["stripped"] for r in read_jsonl(run / "dataset" / "train.jsonl")
                  + read_jsonl(run / "dataset" / "test.jsonl")) == sorted(ANSWERS)

"""Many workers: `--shard i/n` workers then `--merge_shards n` give the dataset one build gives; the merge
refuses a missing, incomplete, overlapping or foreign shard with one line that names the shard and its file."""

import json
import shutil
import subprocess
import sys

import pytest
from dg_common import instruction_source, list_answer, read_jsonl, student_dir, write_jsonl
from dg_replay import ReplayServer
from test_dg_resume import cached_answers, wait_until
from tiny import bpe_tokenizer

from data_gen import annotate
from data_gen.cli import main
from pipeline.dataset import load_splits

ANSWERS = ([list_answer(i) for i in range(12)] + [f"Plain answer number {i}." for i in range(4)]
           + ["  ", "Use <sync/> wisely.", "\n".join(["1. Pluto is far away"] * 30)])
FLAGS = ["--no_parallel_share", "0.1", "--test_size", "0.25"]  # the share filter and the split see every shard


def source_with_rejects(tmp):
    path = instruction_source(tmp, ANSWERS)  # three answers the filters reject
    rows = read_jsonl(path)
    return write_jsonl(path, rows + [rows[3], {"instruction": "no response"}])  # a duplicate, an unreadable row


def recorded():
    tok = bpe_tokenizer()
    out = {a: annotate(a, tok) for a in ANSWERS}
    out[ANSWERS[5]] = out[ANSWERS[5]].replace("Together", "All together")  # changed-text, in one shard only
    return out


def data_gen(tmp, run, source, *flags):
    return main(["--source", str(source), "--student", student_dir(tmp), "--run_dir", str(run), *FLAGS, *flags])


def outputs(run):
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    for key in ("seconds", "config", "teacher_summary"):  # timing, the flags, retries of a busy loopback server
        stats.pop(key)
    return (run / "dataset" / "train.jsonl").read_text(), (run / "dataset" / "test.jsonl").read_text(), stats


@pytest.mark.parametrize("teacher", ["structural", "openai"])
def test_three_workers_and_a_merge_give_the_single_build(tmp_path, capsys, teacher):
    source = source_with_rejects(tmp_path)
    with ReplayServer(recorded()) as server:
        flags = ["--teacher", "openai", "--openai_model", "recorded", "--openai_base_url", server.url,
                 "--openai_concurrency", "4"] if teacher == "openai" else []
        single, sharded = tmp_path / "one" / "t", tmp_path / "three" / "t"
        assert data_gen(tmp_path, single, source, *flags) == 0
        asked = len(server.requested())
        for i in range(3):
            assert data_gen(tmp_path, sharded, source, *flags, "--shard", f"{i}/3") == 0
        assert sorted(server.requested()[asked:]) == sorted(server.requested()[:asked])  # each reply asked once
        capsys.readouterr()
        assert not (sharded / "dataset").exists()  # workers write no dataset
        assert data_gen(tmp_path, sharded, source, *flags, "--merge_shards", "3") == 0
    summary = json.loads(capsys.readouterr().out)
    assert outputs(sharded) == outputs(single)
    assert load_splits(sharded)["test"]["id"] == load_splits(single)["test"]["id"]
    stats = outputs(sharded)[2]
    kept = 12 if teacher == "openai" else 13  # forked answers (one changed by the openai teacher) + 1 plain of 4
    assert summary["kept"] == stats["kept"] == kept and stats["records"] == 19
    assert {k: v for k, v in stats["rejected"].items() if v} == {
        "unreadable-record": 1, "duplicate-record": 1, "empty-answer": 1, "answer-has-tags": 1,
        "repetitive-answer": 1, "no-parallelism-over-share": 3, **({"changed-text": 1} if teacher == "openai" else {})}
    if teacher == "openai":
        for run in (single, sharded):  # the merge adds up the workers' teacher summaries
            assert json.loads((run / "dataset" / "stats.json").read_text())["teacher_summary"]["answered"] == 16
        assert sorted(p.name for p in (sharded / "cache").iterdir()) == [f"shard-{i}-of-3" for i in range(3)]
        assert all((sharded / "cache" / f"shard-{i}-of-3" / "teacher-openai_recorded.jsonl").exists()
                   for i in range(3))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A run folder whose three workers have finished; each test damages a copy."""
    tmp = tmp_path_factory.mktemp("shards")
    source, run = source_with_rejects(tmp), tmp / "runs" / "t"
    for i in range(3):
        assert data_gen(tmp, run, source, "--shard", f"{i}/3") == 0
    return tmp, source, run


def damaged(shards, tmp_path, damage):
    tmp, source, run = shards
    copy = tmp_path / "runs" / "t"
    shutil.copytree(run, copy)
    folder = copy / "dataset-shards"
    damage(folder, lambda i, n=3: folder / f"records.shard-{i}-of-{n}.jsonl")
    return tmp, source, copy


def doubled(folder, path):
    path(0).write_text(path(0).read_text() * 2)


def copied(folder, path):
    path(1).write_text(path(1).read_text() + path(0).read_text().splitlines(keepends=True)[-1])


def truncated(folder, path):
    path(2).write_text("".join(path(2).read_text().splitlines(keepends=True)[:-1]))


@pytest.mark.parametrize("damage, message", [
    (lambda folder, path: path(1).unlink(), "shard 1/3: {folder}/records.shard-1-of-3.jsonl is missing (that "
                                            "worker has not finished); run python -m data_gen with the same flags "
                                            "and --shard 1/3"),
    (truncated, "shard 2/3: {folder}/records.shard-2-of-3.jsonl is incomplete (1 of its records missing"),
    (doubled, "shard 0/3: {folder}/records.shard-0-of-3.jsonl holds record"),
    (copied, "shard 1/3: {folder}/records.shard-1-of-3.jsonl holds record"),
    (lambda folder, path: path(1).write_text(path(1).read_text().replace('"shard": [1, 3]', '"shard": [1, 2]')),
     "shard 1/3: {folder}/records.shard-1-of-3.jsonl was written by --shard 1/2, not --shard 1/3"),
    (lambda folder, path: path(2).write_text(path(2).read_text().replace('"max_blocks": 12', '"max_blocks": 5')),
     "shard 2/3: {folder}/records.shard-2-of-3.jsonl was built with --max_blocks 5, this merge has 12"),
])
def test_the_merge_refuses_a_gap_or_an_overlap_in_one_line(shards, tmp_path, capsys, damage, message):
    tmp, source, run = damaged(shards, tmp_path, damage)
    capsys.readouterr()
    assert data_gen(tmp, run, source, "--merge_shards", "3") == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m data_gen: error: " + message.format(folder=run / "dataset-shards")), err
    assert err.count("\n") == 1 and not (run / "dataset").exists()
    if damage in (doubled, copied):
        assert "(overlap: it is already in shard 0/3)" in err


def test_the_merge_of_an_untouched_copy_works(shards, tmp_path):
    tmp, source, run = damaged(shards, tmp_path, lambda folder, path: None)
    assert data_gen(tmp, run, source, "--merge_shards", "3") == 0
    assert data_gen(tmp, run, source, "--merge_shards", "3") == 0  # the shard files stay; a merge can be redone


@pytest.mark.parametrize("flags, message", [
    (["--shard", "3/3"], "--shard must be i/n with 0 <= i < n (e.g. 0/4), not '3/3'"),
    (["--shard", "1"], "--shard must be i/n with 0 <= i < n (e.g. 0/4), not '1'"),
    (["--shard", "a/b"], "--shard must be i/n"),
    (["--shard", "0/0"], "--shard must be i/n"),
    (["--merge_shards", "0"], "--merge_shards must be at least 1, not 0"),
    (["--shard", "0/2", "--merge_shards", "2"], "--shard and --merge_shards exclude each other"),
])
def test_a_bad_shard_flag_is_one_clear_line(tmp_path, capsys, flags, message):
    assert data_gen(tmp_path, tmp_path / "runs" / "t", instruction_source(tmp_path, [list_answer(0)]), *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m data_gen: error: {message}") and err.count("\n") == 1


def test_a_killed_worker_goes_on_from_its_own_cache(tmp_path):
    answers = [list_answer(i) for i in range(12)]
    source, run = instruction_source(tmp_path, answers), tmp_path / "runs" / "t"
    with ReplayServer({a: annotate(a, bpe_tokenizer()) for a in answers}, delay=0.2) as server:
        flags = ["--teacher", "openai", "--openai_model", "recorded", "--openai_base_url", server.url,
                 "--openai_concurrency", "1"]
        args = [sys.executable, "-m", "data_gen", "--source", str(source), "--student", student_dir(tmp_path),
                "--run_dir", str(run), *flags, "--shard", "1/2"]
        worker = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: server.served >= 2 or worker.poll() is not None, "2 replies")
        worker.kill()
        worker.wait()
        assert worker.returncode < 0, worker.stderr.read().decode()[-2000:]  # killed, not finished
        worker.stderr.close()
        cache = run / "cache" / "shard-1-of-2" / "teacher-openai_recorded.jsonl"
        done, asked = cached_answers(cache), server.requested()
        assert not (run / "dataset-shards" / "records.shard-1-of-2.jsonl").exists()  # nothing half-written
        assert data_gen(tmp_path, run, source, *flags, "--shard", "1/2") == 0  # the same flags again
        assert sorted(server.requested()[len(asked):]) == sorted(set(answers[1::2]) - set(done))
        assert data_gen(tmp_path, run, source, *flags, "--shard", "0/2") == 0
        assert data_gen(tmp_path, run, source, *flags, "--merge_shards", "2") == 0
    assert 0 < len(done) < 6 and sorted(cached_answers(cache)) == sorted(answers[1::2])
    rows = read_jsonl(run / "dataset" / "train.jsonl") + read_jsonl(run / "dataset" / "test.jsonl")
    assert sorted(r["stripped"] for r in rows) == sorted(answers)


def test_workers_write_their_own_answer_caches(tmp_path, monkeypatch):
    """Answers the answer model writes land in the worker's cache folder, and a rerun reuses them."""
    import data_gen.answers as answers_module

    made = []

    def fake_generate(missing, keys, cache, cfg):
        made.extend(r.id for r in missing)
        for n, r in enumerate(missing):
            cache.put(keys[r.id], id=r.id, text=list_answer(n), finish_reason="stop", tokens=1)

    monkeypatch.setattr(answers_module, "_generate", fake_generate)
    source = write_jsonl(tmp_path / "q.jsonl", [{"instruction": f"Tips, please ({i})."} for i in range(5)])
    run = tmp_path / "runs" / "t"
    assert data_gen(tmp_path, run, source, "--answer_model", "tiny", "--shard", "0/2") == 0
    assert len(made) == 3 and (run / "cache" / "shard-0-of-2" / "answers-tiny.jsonl").exists()
    assert not (run / "cache" / "answers-tiny.jsonl").exists()
    assert data_gen(tmp_path, run, source, "--answer_model", "tiny", "--shard", "0/2") == 0
    assert len(made) == 3  # the rerun took every answer from its cache

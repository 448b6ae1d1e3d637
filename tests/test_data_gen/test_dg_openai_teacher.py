"""The openai teacher against a real HTTP server on loopback, driven by the official openai client."""

import json
from collections import Counter

import pytest
from dg_common import instruction_source, list_answer, read_jsonl, student_dir
from dg_replay import ReplayServer
from tiny import bpe_tokenizer

from data_gen import annotate, prompt
from data_gen.cli import main
from data_gen.config import DataGenConfig
from data_gen.openai_teacher import OpenAITeacher, TeacherError
from data_gen.sources import Record
from pipeline.jsonl import JsonlCache

ANSWERS = [list_answer(i) for i in range(6)]
RECORDS = [Record(f"r{i}", [{"role": "user", "content": f"Tips {i}?"}], a, "test") for i, a in enumerate(ANSWERS)]


@pytest.fixture(scope="module")
def recorded():
    tok = bpe_tokenizer()
    return {a: annotate(a, tok) for a in ANSWERS}


def config(url: str, **kw) -> DataGenConfig:
    defaults = dict(teacher="openai", openai_model="recorded", openai_base_url=url, openai_timeout=0.5,
                    openai_backoff=0.01, openai_max_backoff=0.05, openai_max_retries=3, openai_concurrency=4)
    return DataGenConfig(**{**defaults, **kw})


def test_retries_429_5xx_timeouts_and_broken_bodies_then_caches_every_reply(tmp_path, recorded):
    scripts = {ANSWERS[0]: ["429", "ok"], ANSWERS[1]: ["500", "503"], ANSWERS[2]: ["timeout"],
               ANSWERS[3]: ["garbage-body"]}
    with ReplayServer(recorded, scripts) as server:
        teacher = OpenAITeacher(config(server.url), tmp_path)
        replies = teacher.annotate_all(RECORDS)
        summary = teacher.summary()
    assert replies == {r.id: recorded[r.answer] for r in RECORDS}
    assert summary["errors"] == {"429": 1, "500": 1, "503": 1, "timeout": 1, "broken-reply": 1}
    assert (summary["retries"], summary["failed_records"], summary["answered"]) == (5, 0, 6)
    assert summary["requests"] == 11 and summary["completion_tokens"] == 60
    assert Counter(server.requested()) == Counter({ANSWERS[0]: 2, ANSWERS[1]: 3, ANSWERS[2]: 2, ANSWERS[3]: 2,
                                                   ANSWERS[4]: 1, ANSWERS[5]: 1})
    assert len(JsonlCache(tmp_path / "teacher-openai_recorded.jsonl")) == 6


def test_requests_carry_the_prompt_with_its_seven_examples(tmp_path, recorded):
    with ReplayServer(recorded) as server:
        OpenAITeacher(config(server.url), tmp_path).annotate_all(RECORDS[:1])
    request = server.requests[0]
    assert request["model"] == "recorded"
    assert [m["role"] for m in request["messages"]] == ["system"] + ["user", "assistant"] * 7 + ["user"]
    assert request["messages"][0]["content"] == prompt.SYSTEM
    assert request["messages"][-1]["content"].endswith(ANSWERS[0])


def test_a_second_run_sends_nothing_for_cached_replies(tmp_path, recorded):
    with ReplayServer(recorded) as server:
        OpenAITeacher(config(server.url), tmp_path).annotate_all(RECORDS[:3])
        again = OpenAITeacher(config(server.url), tmp_path)
        replies = again.annotate_all(RECORDS)
    assert Counter(server.requested()) == Counter(ANSWERS)  # each record asked once over both runs
    assert again.summary()["records_from_cache"] == 3
    assert replies == {r.id: recorded[r.answer] for r in RECORDS}


def test_another_model_or_prompt_version_is_not_served_from_the_cache(tmp_path, recorded, monkeypatch):
    with ReplayServer(recorded) as server:
        OpenAITeacher(config(server.url), tmp_path).annotate_all(RECORDS[:1])
        OpenAITeacher(config(server.url, openai_model="other"), tmp_path).annotate_all(RECORDS[:1])
        monkeypatch.setattr(prompt, "version", lambda: "edited")
        OpenAITeacher(config(server.url), tmp_path).annotate_all(RECORDS[:1])
    assert server.requested() == [ANSWERS[0]] * 3


def test_a_record_that_keeps_failing_is_left_out_and_asked_again_next_run(tmp_path, recorded):
    with ReplayServer(recorded, {ANSWERS[0]: ["500"] * 4}) as server:
        teacher = OpenAITeacher(config(server.url, openai_max_retries=3), tmp_path)
        replies = teacher.annotate_all(RECORDS[:2])
        assert replies[RECORDS[0].id] is None and replies[RECORDS[1].id] == recorded[ANSWERS[1]]
        assert teacher.summary()["failed_records"] == 1
        assert server.requested().count(ANSWERS[0]) == 4  # the first try and 3 retries
        replies = OpenAITeacher(config(server.url), tmp_path).annotate_all(RECORDS[:2])
    assert replies[RECORDS[0].id] == recorded[ANSWERS[0]]
    assert server.requested().count(ANSWERS[0]) == 5 and server.requested().count(ANSWERS[1]) == 1


def test_a_bad_request_is_not_retried(tmp_path, recorded):
    with ReplayServer(recorded, {ANSWERS[0]: ["400"]}) as server:
        teacher = OpenAITeacher(config(server.url), tmp_path)
        replies = teacher.annotate_all(RECORDS[:2])
    assert replies[RECORDS[0].id] is None and teacher.summary()["errors"] == {"400": 1}
    assert server.requested().count(ANSWERS[0]) == 1


def test_concurrency_is_bounded(tmp_path, recorded):
    with ReplayServer(recorded, delay=0.05) as server:
        OpenAITeacher(config(server.url, openai_concurrency=2), tmp_path).annotate_all(RECORDS)
    assert server.max_in_flight <= 2
    assert sorted(server.requested()) == sorted(ANSWERS)


def test_a_rejected_key_stops_the_run_with_a_clear_error(tmp_path, recorded):
    with ReplayServer(recorded, models_status=401) as server, pytest.raises(TeacherError) as err:
        OpenAITeacher(config(server.url, openai_api_key_env="DG_TEST_KEY"), tmp_path).annotate_all(RECORDS)
    assert "rejected the API key (set $DG_TEST_KEY)" in str(err.value) and server.url in str(err.value)
    assert server.requested() == []


def test_an_unreachable_endpoint_fails_at_once(tmp_path, recorded):
    with ReplayServer(recorded) as server:
        url = server.url  # the port is free again once the server has stopped
    with pytest.raises(TeacherError, match="cannot reach the teacher endpoint"):
        OpenAITeacher(config(url, openai_max_retries=0), tmp_path).annotate_all(RECORDS)


def test_a_reply_the_filters_reject_is_asked_again_by_later_runs_up_to_openai_reply_tries(tmp_path, recorded):
    garbage = "Sorry, the upstream model is overloaded."  # a 200 with text that is not the annotated answer
    scripts = {ANSWERS[0]: [garbage], ANSWERS[1]: [garbage] * 9}
    source = instruction_source(tmp_path, ANSWERS[:4])
    run = tmp_path / "runs" / "t"

    def kept() -> list[str]:
        rows = read_jsonl(run / "dataset" / "train.jsonl") + read_jsonl(run / "dataset" / "test.jsonl")
        return sorted(r["stripped"] for r in rows)

    with ReplayServer(recorded, scripts) as server:
        def data_gen() -> int:
            return main(["--source", str(source), "--student", student_dir(tmp_path), "--run_dir", str(run),
                         "--teacher", "openai", "--openai_model", "recorded", "--openai_base_url", server.url,
                         "--no_parallel_share", "1"])

        assert data_gen() == 0 and kept() == sorted(ANSWERS[2:4])
        assert data_gen() == 0 and kept() == sorted([ANSWERS[0], *ANSWERS[2:4]])  # its second reply is valid
        for _ in range(2):  # the record that keeps getting garbage gets its third reply, then no more
            assert data_gen() == 0 and kept() == sorted([ANSWERS[0], *ANSWERS[2:4]])
    assert Counter(server.requested()) == Counter({ANSWERS[0]: 2, ANSWERS[1]: 3, ANSWERS[2]: 1, ANSWERS[3]: 1})
    stats = json.loads((run / "dataset" / "stats.json").read_text())
    assert stats["rejected"]["changed-text"] == 1 and stats["teacher_summary"]["asked_again_after_rejection"] == 0

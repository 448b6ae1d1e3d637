"""Answers for instructions without one: generated in batches by the answer model, cached, never redone."""

import pytest
from tiny import bpe_tokenizer, tiny_model

import interpreter
from data_gen.answers import fill_answers
from data_gen.config import DataGenConfig
from data_gen.sources import Record, with_draws
from pipeline.jsonl import JsonlCache, read_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("answer-model")
    tok = bpe_tokenizer()
    tiny_model("llama", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def records(n=5):
    return [Record(f"r{i}", [{"role": "user", "content": f"Give me tip number {i}."}], None, "seed") for i in range(n)]


def test_answers_are_generated_in_batches_then_served_from_the_cache(tmp_path, model_dir, monkeypatch):
    cfg = DataGenConfig(answer_model=model_dir, answer_max_new_tokens=12, answer_batch_size=2)
    first = records()
    counts = fill_answers(first, cfg, tmp_path)
    assert counts["answers_generated"] == 5 and counts["answers_from_cache"] == 0
    assert counts["answer-trimmed"] + counts["answer-truncated"] == 5  # a random model never stops on its own
    cache_file = next(tmp_path.glob("answers-*.jsonl"))
    assert len(JsonlCache(cache_file)) == 5

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached answer was generated again")

    monkeypatch.setattr(interpreter.Engine, "generate_batch", no_generation)
    again = records(5)
    counts = fill_answers(again, cfg, tmp_path)
    assert counts["answers_from_cache"] == 5 and counts["answers_generated"] == 0
    assert [r.answer for r in again] == [r.answer for r in first]


def test_a_longer_cap_is_a_different_answer(tmp_path, model_dir):
    fill_answers(records(2), DataGenConfig(answer_model=model_dir, answer_max_new_tokens=8), tmp_path)
    counts = fill_answers(records(2), DataGenConfig(answer_model=model_dir, answer_max_new_tokens=9), tmp_path)
    assert counts["answers_generated"] == 2


def test_records_with_answers_are_left_alone(tmp_path):
    done = [Record("a", [{"role": "user", "content": "Q"}], "A.", "file")]
    assert fill_answers(done, DataGenConfig(answer_model="nobody/never-loaded"), tmp_path) == {}
    assert done[0].answer == "A."


def test_further_draws_are_new_answers_and_the_first_is_the_single_answer(tmp_path, model_dir):
    cfg = DataGenConfig(answer_model=model_dir, answer_max_new_tokens=12, answer_batch_size=4)
    single = records(2)
    fill_answers(single, cfg, tmp_path)
    drawn = with_draws(records(2), 3)
    assert [r.id for r in drawn] == ["r0", "r0-1", "r0-2", "r1", "r1-1", "r1-2"]
    counts = fill_answers(drawn, cfg, tmp_path)
    assert counts["answers_from_cache"] == 2 and counts["answers_generated"] == 4
    assert [drawn[0].answer, drawn[3].answer] == [r.answer for r in single]
    texts = [row["text"] for row in read_rows(next(tmp_path.glob("answers-*.jsonl")))]
    assert len(texts) == len(set(texts)) == 6  # sampled: each draw its own answer


def test_draws_need_sampling():
    with pytest.raises(ValueError, match="answers_per_instruction"):
        DataGenConfig(answers_per_instruction=2, answer_temperature=0).check()

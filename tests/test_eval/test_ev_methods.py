"""The decoding methods under evaluation, on tiny random models with scripted tokens."""

import pytest
from tiny import bpe_tokenizer, tiny_model

from eval.methods import Pasta, Sequential, SkeletonOfThought, skeleton_points
from eval.pattern import PatternDecoder
from interpreter import Engine, Options, Script, encode, turn_end_id


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


def test_sequential_and_pasta_records(engine):
    opts = Options(max_new_tokens=12)
    for method in (Sequential(engine, "tiny", opts), Pasta(engine, "tiny", opts)):
        r = method.answer("Hi")
        assert r["tokens"] == 12 and r["wall_time"] > 0 and r["theoretical_speedup"] > 0
        assert r["method"] == method.name and r["text"] == r["stored"]


def test_skeleton_points_take_the_head_of_wordy_points():
    text = "Sure:\n1. **Stay hydrated**: drink water\n2. Sleep well every single night of the week please\n3) Move"
    assert skeleton_points(text, 8) == [(1, "Stay hydrated"), (2, "Sleep well every single night of the week"),
                                        (3, "Move")]


def test_sot_expands_every_point_in_one_batch(engine, monkeypatch):
    calls = []
    real = engine.generate_batch

    def spy(prompts, options, batch_size):
        calls.append(len(prompts))
        return real(prompts, options, batch_size)

    monkeypatch.setattr(engine, "generate_batch", spy)
    monkeypatch.setattr(engine, "generate", lambda *a, **k: type("R", (), {
        "text": "1. alpha\n2. beta\n3. gamma", "thread_tokens": [6], "steps": 7})())
    r = SkeletonOfThought(engine, "tiny", Options(max_new_tokens=60)).answer("Q")
    assert calls == [3] and r["threads"] == 3
    assert r["text"].startswith("1. alpha") and "\n2. beta" in r["text"] and "\n3. gamma" in r["text"]



def test_sot_spares_its_skeleton_the_repetition_penalty(engine, monkeypatch):
    asked = {}
    real = engine.generate_batch
    monkeypatch.setattr(engine, "generate", lambda *a, options, **k: asked.setdefault("skeleton", options) and type(
        "R", (), {"text": "1. alpha\n2. beta", "thread_tokens": [6], "steps": 7})())
    monkeypatch.setattr(engine, "generate_batch", lambda p, options, batch_size: asked.setdefault(
        "expansions", options) and real(p, options, batch_size))
    SkeletonOfThought(engine, "tiny", Options(max_new_tokens=60, repetition_penalty=1.15)).answer("Q")
    assert asked["skeleton"].repetition_penalty == 1.0 and asked["expansions"].repetition_penalty == 1.15

def test_pattern_adopts_item_threads_while_the_model_continues_the_list(engine):
    tok = engine.tokenizer
    main = encode(tok, "Intro:\n1. a b\n2. c d\n3.") + encode(tok, "4.") + encode(tok, "\nEnd")
    items = [encode(tok, " x y\n"), encode(tok, " z\n"), encode(tok, " q\n"), encode(tok, " r\n"), encode(tok, " s\n")]
    source = Script(main, items, turn_end_id(tok))
    r = PatternDecoder(engine, "tiny", Options(max_new_tokens=200), source=source).answer("Q")
    assert r["text"] == "Intro:\n1. a b\n2. c d\n3. x y\n4. z\n\nEnd"
    assert r["threads"] >= 2 and r["finish_reason"] == "stop"
    assert r["steps"] < len(encode(tok, r["text"]))  # items 3 and 4 were written in parallel


def test_pattern_stops_a_looping_answer_like_the_engine_does(engine):
    tok = engine.tokenizer
    loop = "Intro. " + "the cat sat on the mat and then " * 14
    source = Script(encode(tok, loop), [], turn_end_id(tok))
    free = PatternDecoder(engine, "tiny", Options(max_new_tokens=400), source=source).answer("Q")
    stopped = PatternDecoder(engine, "tiny", Options(max_new_tokens=400, stop_loops=True), source=source).answer("Q")
    assert free["finish_reason"] == "stop" and free["text"] == loop
    assert stopped["finish_reason"] == "loop" and loop.startswith(stopped["text"])
    assert stopped["tokens"] < free["tokens"] / 2

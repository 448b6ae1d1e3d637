"""Streamed text is the final text: nothing handed out is taken back by a later repair or stop string."""

import random

import pytest
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options, Script, encode, turn_end_id


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok), seed=1), tok)


def _streamed(engine, prompt, mode, opts, source=None):
    deltas, result = [], None
    for update in engine.stream(prompt, mode, opts, source=source):
        deltas.append(update.get("delta", ""))
        result = update.get("result", result)
    return "".join(deltas), result


def test_a_dangling_tag_opener_is_never_streamed(engine):
    """Main writes `a <` and then a malformed tag: the repair removes the `<`, which must not have been sent."""
    tok = engine.tokenizer
    script = Script(encode(tok, "a <") + encode(tok, "</async>") + encode(tok, " bcdef"), [], turn_end_id(tok))
    streamed, result = _streamed(engine, "Hi", "pasta", Options(), script)
    assert any("dangling" in r for r in result.repairs)  # the case really arises
    assert streamed == result.text


@pytest.mark.parametrize("mode", ["pasta", "sequential"])
def test_a_stop_string_is_never_streamed_in_part(engine, mode):
    tok = engine.tokenizer
    ids = [i for w in ("Try", " these", " tips", ":", " sleep", " eight", " hours") for i in encode(tok, w)]
    streamed, result = _streamed(engine, "Hi", mode, Options(stop=("eight hours",)), Script(ids, [], turn_end_id(tok)))
    assert result.text == "Try these tips: sleep " and streamed == result.text


@pytest.mark.parametrize("mode", ["pasta", "sequential"])
def test_sampled_streams_with_stop_strings_add_up_to_the_answer(engine, mode):
    rng = random.Random(0)
    words = ["sleep", "water", "walk", "read", "book", "step", "quick", "brown", "lazy", "div", "class"]
    for run in range(20):
        word = rng.choice(words)
        start = rng.randrange(len(word) - 1)
        stop = (word[start:start + rng.choice((2, 3))], " " + rng.choice(words)[:2])
        opts = Options(max_new_tokens=40, temperature=1.3, seed=run, stop=stop)
        streamed, result = _streamed(engine, "Give tips", mode, opts)
        assert streamed == result.text, (run, stop)

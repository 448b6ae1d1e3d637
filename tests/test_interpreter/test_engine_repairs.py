"""Malformed model output never hangs or crashes the engine, and the result says what was repaired."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options, Script, encode, parse, strip, turn_end_id

P = '<promise topic="{}" tokens="5"/>'


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


def run(engine, main: str, blocks: list[str] = (), **options):
    tok = engine.tokenizer
    script = Script(encode(tok, main), [encode(tok, b) for b in blocks], turn_end_id(tok))
    result = engine.generate(engine.prompt_ids("Q"), source=script, options=Options(**options))
    assert parse(result.stored).stripped == result.text == strip(result.stored)  # always a valid stored form
    return result


def test_well_formed_output_needs_no_repair(engine):
    r = run(engine, f"A{P.format('x')}B<sync/>C", ["xx</async>"])
    assert r.repairs == [] and r.text == "AxxBC" and r.threads == 1 and r.finish_reason == "stop"


def test_block_that_never_closes_is_cut_at_its_limit(engine):
    r = run(engine, f"A{P.format('x')}<sync/>C", ["yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"], max_thread_tokens=6)
    assert r.thread_tokens[1] == 6
    assert any("without </async>" in x for x in r.repairs)
    assert r.stored.count("</async>") == 1 and r.text.endswith("C")


def test_block_ending_the_answer_is_closed(engine):
    r = run(engine, f"A{P.format('x')}<sync/>C", ["yy"])  # the script ends: the block draws the end token
    assert any("ended the answer without </async>" in x for x in r.repairs)
    assert r.text == "AyyC"


def test_stray_and_broken_tags_in_main_are_dropped(engine):
    r = run(engine, "A</async>B<sync>C<async>D<promise topic=x/>E")
    assert r.text == "ABCDE"
    assert len(r.repairs) == 4


def test_nesting_inside_a_block_is_dropped(engine):
    r = run(engine, f"A{P.format('x')}<sync/>C", [f"y{P.format('z')}<sync/>w</async>"])
    assert r.text == "AywC" and r.threads == 1
    assert sum("no nesting" in x for x in r.repairs) == 2


def test_runaway_promises_are_capped(engine):
    main = "".join(P.format(i) for i in range(5)) + "<sync/>end"
    r = run(engine, main, ["a</async>"] * 5, max_promises=2)
    assert r.threads == 2 and r.text == "aaend"
    assert sum("dropped promise" in x for x in r.repairs) == 3


def test_whole_answer_limit_cuts_every_thread(engine):
    r = run(engine, f"A{P.format('x')}" + "b" * 40, ["c" * 40], max_new_tokens=30)
    assert r.finish_reason == "length"
    assert sum(r.thread_tokens) <= 31


def test_stop_string_ends_main(engine):
    r = run(engine, "Hello STOP and more", stop=("STOP",))
    assert r.text == "Hello "


def test_stop_in_the_token_after_a_promise_leaves_an_empty_block(engine):
    tok = engine.tokenizer
    main = encode(tok, "A" + P.format("x")) + encode(tok, "STOP")
    script = Script(main, [encode(tok, "b</async>")], turn_end_id(tok))
    r = engine.generate(engine.prompt_ids("Q"), source=script, options=Options(stop=("ST",)))
    assert parse(r.stored).stripped == r.text


def test_sampling_is_reproducible_with_a_seed(engine):
    ids = engine.prompt_ids("Write.")
    a = engine.generate(ids, options=Options(temperature=1.0, top_p=0.9, top_k=50, seed=7, max_new_tokens=20))
    b = engine.generate(ids, options=Options(temperature=1.0, top_p=0.9, top_k=50, seed=7, max_new_tokens=20))
    c = engine.generate(ids, options=Options(temperature=1.0, seed=8, max_new_tokens=20))
    assert a.text == b.text and a.text != c.text


def test_stream_deltas_add_up_to_the_answer_in_reading_order(engine):
    tok = engine.tokenizer
    script = Script(encode(tok, f"Intro {P.format('a')}{P.format('b')}<sync/> end"),
                    [encode(tok, " first long block here</async>"), encode(tok, " second</async>")],
                    turn_end_id(tok))
    deltas, result = [], None
    for update in engine.stream(engine.prompt_ids("Q"), source=script):
        if "delta" in update:
            deltas.append(update["delta"])
        result = update.get("result", result)
    assert "".join(deltas) == result.text == "Intro  first long block here second end"
    assert len(deltas) > 3


NOISE = st.lists(st.sampled_from(["a", " b", "\n", "<", ">", "/", '"', "<async>", "</async>", "<sync/>", "<sync>",
                                  P.format("t"), '<promise topic="', "</", "async", "promise"]), max_size=25)


@settings(max_examples=40, deadline=None)
@given(NOISE, st.lists(NOISE, max_size=3), st.integers(1, 3), st.sampled_from([(), ("b",), ("/",), ("c",)]))
def test_any_output_ends_with_a_valid_stored_form(engine, main, blocks, max_threads, stop):
    r = run(engine, "".join(main), ["".join(b) for b in blocks], max_threads=max_threads, max_new_tokens=120,
            max_thread_tokens=15, stop=stop)
    assert r.finish_reason in ("stop", "length")

"""Options.stop_loops: a thread that falls into a loop ends there instead of spending the budget on it."""

import pytest
from tiny import bpe_tokenizer, memorize, tiny_model

from interpreter import Engine, Options, Script, encode, parse, strip, turn_end_id
from interpreter.repetition import loops

P = '<promise topic="{}" tokens="5"/>'
LOOP = "the cat sat on the mat and then " * 14  # a sentence over and over, as a greedy small model writes
PROSE = ("Bread needs flour, water, salt and yeast. Mix them, knead the dough for ten minutes, and let it rise "
         "until doubled. Shape a loaf, proof it again, then bake in a hot oven until the crust is brown and the "
         "bottom sounds hollow. Cool it on a rack before slicing, so the crumb can set; warm bread tears. Store "
         "it in paper, not plastic, to keep the crust crisp.")  # 70 words, no 4-gram twice


def run(engine, main: str, blocks: list[str] = (), mode="pasta", **options):
    tok = engine.tokenizer
    script = Script(encode(tok, main), [encode(tok, b) for b in blocks], turn_end_id(tok))
    result = engine.generate(engine.prompt_ids("Q"), mode=mode, source=script,
                             options=Options(max_new_tokens=2000, max_thread_tokens=2000, **options))
    assert parse(result.stored).stripped == result.text == strip(result.stored)
    return result


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


def test_loops_needs_a_full_window_of_repeats():
    assert loops(LOOP) and not loops(PROSE)
    assert not loops("the cat sat on the mat " * 5)  # 30 words: too short to call


def test_loops_catches_runs_without_spaces():
    """Seen from the full demo's student: digits or numbers counted on without a space until the budget ran out."""
    assert loops("ideas:" + "1" * 400) and loops("10:15:16:27:38:49:" + ":".join(map(str, range(51, 400))))
    assert not loops(PROSE + " More at https://example.org/recipes/bread/sourdough-starter-feeding-schedule.html")


@pytest.mark.parametrize("mode", ["pasta", "sequential"])
def test_a_looping_answer_ends_with_finish_reason_loop(engine, mode):
    free = run(engine, "Intro. " + LOOP, mode=mode)
    stopped = run(engine, "Intro. " + LOOP, mode=mode, stop_loops=True)
    assert free.finish_reason == "stop" and free.text == "Intro. " + LOOP
    assert stopped.finish_reason == "loop"
    assert free.text.startswith(stopped.text) and len(stopped.text.split()) < 60  # caught within about two rounds
    assert stopped.thread_tokens[0] < free.thread_tokens[0] / 2


def test_text_that_does_not_loop_is_untouched(engine):
    r = run(engine, PROSE, stop_loops=True)
    assert r.finish_reason == "stop" and r.text == PROSE and r.repairs == []


def test_a_looping_block_is_closed_and_main_goes_on(engine):
    r = run(engine, f"A{P.format('x')}B<sync/>C", [LOOP + "</async>"], stop_loops=True)
    assert r.finish_reason == "stop" and r.text.startswith("A") and r.text.endswith("BC")
    assert any("looped" in x for x in r.repairs)
    assert r.thread_tokens[1] < len(encode(engine.tokenizer, LOOP)) / 2


def test_generate_batch_stops_a_row_where_sequential_decoding_does():
    tok = bpe_tokenizer()
    looping = Engine(memorize(tiny_model("llama", len(tok)), tok, "Q", "Intro. " + LOOP, steps=200), tok)
    prompts = ["Q", "Bread?"]
    opts = Options(max_new_tokens=200, stop_loops=True)
    batch = looping.generate_batch(prompts, opts)
    one = [looping.generate(p, mode="sequential", options=opts) for p in prompts]
    assert [(r.text, r.finish_reason, r.looped) for r in batch] == [(r.text, r.finish_reason, r.looped) for r in one]
    assert batch[0].finish_reason == "loop" and batch[0].text.startswith("Intro. the cat sat")
    free = looping.generate_batch(prompts[:1], Options(max_new_tokens=200))[0]
    assert free.finish_reason != "loop" and len(free.text) > len(batch[0].text)


def test_cross_block_repetition_counts_what_parallel_blocks_say_twice():
    from interpreter import cross_block_repetition

    assert cross_block_repetition(["1. Drink water every day."]) is None  # one block repeats nothing
    assert cross_block_repetition(["1. Drink water every day.", "2. Sleep eight hours a night."]) == 0.0
    same = cross_block_repetition(["1. Drink water every day.", "2. Drink water every day."])
    assert same == 1.0  # numbers masked: the same sentence under another number
    half = cross_block_repetition(["Drink water every day", "Drink water every day", "Sleep eight hours a night"])
    assert 0.3 < half < 0.7

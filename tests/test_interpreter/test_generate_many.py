"""Best-of-N decoding: N answers to one prompt in one shared cache are the answers decoded one by one."""

import pytest
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options, Script, encode, turn_end_id


@pytest.fixture(scope="module", params=["llama", "gemma"])
def engine(request):
    tok = bpe_tokenizer()
    return Engine(tiny_model(request.param, len(tok)), tok)


def _scripts(tok):
    """Three answers with different shapes: two blocks and a sync, one block left to the end, no tags."""
    end = turn_end_id(tok)
    return [
        lambda: Script(encode(tok, 'Tips:<promise topic="a" tokens="5"/>x<promise topic="b" tokens="3"/>y<sync/>')
                       + [None] * 3, [encode(tok, " sleep well</async>"), [None] * 6 + encode(tok, "</async>")], end),
        lambda: Script(encode(tok, 'One<promise topic="c" tokens="9"/> and more'),
                       [[None] * 12 + encode(tok, "</async>")], end),
        lambda: Script([None] * 7, [], end),
    ]


def test_scripted_answers_equal_separate_runs(engine):
    ids = engine.prompt_ids("Give tips")
    scripts = _scripts(engine.tokenizer)
    together = engine.generate_many(ids, [Options()] * len(scripts), sources=[s() for s in scripts])
    for script, many in zip(scripts, together):
        one = engine.generate(ids, source=script())
        assert (many.stored, many.text, many.thread_tokens, many.repairs) == \
               (one.stored, one.text, one.thread_tokens, one.repairs)
        assert many.steps == one.steps  # an answer takes part in as many passes as it would alone
    assert together[0].threads == 2 and together[1].threads == 1 and together[2].threads == 0


def test_sampled_answers_equal_separate_runs_with_their_seeds(engine):
    ids = engine.prompt_ids("Name three fruits.")
    options = [Options(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3, 4)]
    together = engine.generate_many(ids, options)
    alone = [engine.generate(ids, options=o) for o in options]
    assert [r.stored for r in together] == [r.stored for r in alone]
    assert len({r.stored for r in together}) > 1  # the seeds differ, so do the answers


def test_one_forward_pass_per_step_for_all_answers(engine):
    calls = []
    hook = engine.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ids = engine.prompt_ids("Q")
        results = engine.generate_many(ids, [Options(max_new_tokens=n) for n in (5, 9, 3)])
    finally:
        hook.remove()
    assert [r.tokens for r in results] == [5, 9, 3]
    assert len(calls) == max(r.steps for r in results) == 9  # not 5 + 9 + 3: the answers share every pass

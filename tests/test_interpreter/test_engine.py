"""The engine against model.generate, the naive reference interpreter, and one training forward pass."""

from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from strategies import stored_sequences
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options, Script, build_layout, encode, strip, turn_end_id
from interpreter.reference import ReferenceInterpreter

FAMILIES = ["llama", "gemma"]
FREE = None


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    tok = bpe_tokenizer()
    return Engine(tiny_model(request.param, len(tok)), tok)


def _script(tok, main_parts, block_parts):
    """Scripts mix forced text (str) with n free greedy tokens (int)."""
    def expand(parts):
        out = []
        for p in parts:
            out += encode(tok, p) if isinstance(p, str) else [FREE] * p
        return out
    return lambda: Script(expand(main_parts), [expand(b) for b in block_parts], turn_end_id(tok))


TAGGED = (["Try:", 2, '<promise topic="a" tokens="5"/>', 1, '<promise topic="b" tokens="3"/>', 3, "<sync/>", 3],
          [[30, "</async>"], [25, "</async>"]])


def test_sequential_greedy_equals_model_generate(engine):
    ids = engine.prompt_ids("Give me three tips.")
    ours = engine.generate(ids, mode="sequential", options=Options(max_new_tokens=40))
    x = torch.tensor([ids])
    theirs = engine.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                                   eos_token_id=sorted(engine.end_ids), pad_token_id=1)[0, len(ids):].tolist()
    assert ours.text == engine.tokenizer.decode(theirs)
    assert ours.thread_tokens == [len(theirs)]


@pytest.mark.parametrize("max_threads", [8, 1])
def test_engine_matches_reference_interpreter(engine, max_threads):
    tok = engine.tokenizer
    script = _script(tok, *TAGGED)
    ids = engine.prompt_ids("Give tips")
    ours = engine.generate(ids, source=script(), options=Options(max_threads=max_threads), record_logits=True)
    stored, drawn, log = ReferenceInterpreter(engine.model, tok, engine.end_ids).run(ids, script())
    assert ours.stored == stored and ours.repairs == []
    assert ours.thread_tokens == drawn
    per_ours, per_ref = defaultdict(list), defaultdict(list)
    for tid, row in ours.logits:
        per_ours[tid].append(row)
    for tid, row in log:
        per_ref[tid].append(row)
    for tid in per_ref:  # the same logits for every draw of every thread, whatever the schedule
        assert torch.allclose(torch.stack(per_ours[tid]), torch.stack(per_ref[tid]), atol=1e-4)
    if max_threads == 1:
        assert ours.steps > engine.generate(ids, source=script()).steps  # the queued block waited


@settings(max_examples=12, deadline=None)
@given(stored_sequences(max_items=5))
def test_replay_logits_equal_one_training_forward(engine, case):
    """The proof that training and inference agree: same positions, same visibility, same logits."""
    stored, _ = case
    tok = engine.tokenizer
    ids = engine.prompt_ids("Q")
    replay = engine.replay(ids, stored, record_logits=True)
    assert replay.stored == stored
    lay = build_layout(stored, tok, ids, end_id=turn_end_id(tok))
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([lay.input_ids]), position_ids=torch.tensor([lay.position_ids]),
                              attention_mask=lay.additive_mask()[None, None]).logits[0]
    rows = defaultdict(list)
    for i, target in enumerate(lay.targets):
        if target != -100:
            rows[max(lay.thread[i], 0)].append(logits[i])
    drawn = defaultdict(list)
    for tid, row in replay.logits:
        drawn[tid].append(row)
    assert rows.keys() == drawn.keys()
    for tid in rows:
        assert torch.allclose(torch.stack(rows[tid]), torch.stack(drawn[tid]), atol=1e-4)


def test_replay_steps_follow_the_cost_model(engine):
    from interpreter import measure

    stored = ('Tips:<promise topic="a" tokens="20"/><async>\n1. Sleep well and long</async>'
              '<promise topic="b" tokens="20"/><async>\n2. Drink water</async><sync/>\nDone.')
    ids = engine.prompt_ids("Q")
    costs = measure(stored, engine.tokenizer)
    pasta = engine.replay(ids, stored)
    seq = engine.replay(ids, stored, mode="sequential")
    assert seq.steps == costs.sequential_tokens + 1  # prefill draws the first token; one more draws the end
    assert pasta.steps == costs.parallel_steps + 1
    assert seq.text == pasta.text == strip(stored)

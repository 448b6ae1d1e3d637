"""Continuous batching: requests with their own prompts decode together, each in its own KV row, and
each gets exactly the answer it would get alone."""

import pytest
from test_generate_many import _scripts
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options


class CancelAfter:
    """A cancel flag that turns on at its n-th check (the engine checks once a step)."""

    def __init__(self, n):
        self.n = n

    def is_set(self):
        self.n -= 1
        return self.n < 0


@pytest.fixture(scope="module", params=["llama", "gemma"])
def engine(request):
    tok = bpe_tokenizer()
    return Engine(tiny_model(request.param, len(tok)), tok, max_batch=3)


def _requests(engine):
    """(prompt, mode, options, source factory, cancel factory): mixed prompt lengths, modes, budgets and cuts."""
    scripts = _scripts(engine.tokenizer)
    long_prompt = "Explain in detail, with many words and examples, how " * 4 + "bread rises."
    return [
        ("Give tips", "pasta", Options(), scripts[0], None),
        (long_prompt, "sequential", Options(max_new_tokens=14), None, None),
        ("Hi", "pasta", Options(max_new_tokens=9), None, None),
        ("Give tips", "pasta", Options(), scripts[1], lambda: CancelAfter(6)),
        ("List things", "sequential", Options(max_new_tokens=20, stop=("e",)), None, None),
        ("Q", "pasta", Options(max_new_tokens=12, temperature=1.0, seed=3), None, None),
        (long_prompt[:40], "pasta", Options(), scripts[2], None),
        ("Never runs", "sequential", Options(), None, lambda: CancelAfter(0)),
    ]


def _key(result):
    return (result.stored, result.text, result.thread_tokens, result.repairs, result.finish_reason, result.steps)


def test_batched_answers_equal_answers_decoded_alone(engine):
    specs = _requests(engine)
    alone = [engine.generate(p, m, o, source=s() if s else None, cancel=c() if c else None)
             for p, m, o, s, c in specs]
    # together: more requests than max_batch, and half of them arrive while the others decode
    requests, seen_batch = [], 0
    for k, (p, m, o, s, c) in enumerate(specs):
        requests.append(engine.add(p, m, o, source=s() if s else None, cancel=c() if c else None))
        if k % 2:
            engine.step()
            seen_batch = max(seen_batch, len(engine.running))
    while engine.has_work:
        engine.step()
        seen_batch = max(seen_batch, len(engine.running))
    assert seen_batch == engine.max_batch  # they did decode together
    for spec, one, request in zip(specs, alone, requests):
        assert _key(request.result()) == _key(one), spec[:2]
    assert alone[3].finish_reason == "cancelled" and alone[7].finish_reason == "cancelled"
    assert len(engine.kv) == 0 and engine.kv.cache is None  # every row freed


def test_one_forward_pass_per_step_across_requests(engine):
    calls = []
    hook = engine.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        requests = [engine.add(p, "sequential", Options(max_new_tokens=n)) for p, n in (("a", 5), ("bb b", 9))]
        while engine.has_work:
            engine.step()
    finally:
        hook.remove()
    assert [r.result().tokens for r in requests] == [5, 9]
    assert len(calls) == 2 + 8  # two prefills, then one pass a step for both: not 5 + 9 passes


def test_memory_follows_the_live_requests(engine):
    """A soak of staggered requests: the cache never outgrows what the live requests hold."""
    widest = 0
    for k in range(60):
        engine.add(f"question number {k} " * (1 + k % 5), "sequential", Options(max_new_tokens=4 + k % 7))
        engine.step()
        widest = max(widest, engine.kv.width)
    while engine.has_work:
        engine.step()
    longest_prompt = len(engine.prompt_ids("question number 59 " * 5))
    assert widest <= longest_prompt + 2 * 11  # a prompt plus at most its answer and the padding beside it
    assert engine.kv.cache is None


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(engine, monkeypatch):
    import queue

    from interpreter import AsyncEngine

    core = AsyncEngine(Engine(engine.model, engine.tokenizer))
    core.start()
    try:
        updates = queue.Queue()
        monkeypatch.setattr(core.engine.kv, "step", lambda feeds: 1 / 0)
        core.submit(core.engine.prompt_ids("Hi"), "pasta", Options(max_new_tokens=5), updates.put)
        assert "ZeroDivisionError" in updates.get(timeout=30)["error"]
        core.submit(core.engine.prompt_ids("Hi"), "pasta", Options(max_new_tokens=5), updates.put, stream=False)
        assert updates.get(timeout=30)["result"].tokens == 5  # a fresh batch: the broken one was dropped
    finally:
        core.shutdown()

"""Sampler: temperature, top-k and top-p as HF's generate applies them, drawn from the candidates that can win;
`generate_batch` samples with the same Sampler as the engine."""

import pytest
import torch
from tiny import bpe_tokenizer, tiny_model

from interpreter import Engine, Options
from interpreter.sampling import CANDIDATES, Sampler


def nucleus(rows, opts):
    """The tokens a full sort keeps, each with its renormalized probability (HF's TopK then TopP warpers)."""
    logits = rows / opts.temperature
    if opts.top_k:
        logits = logits.masked_fill(logits < logits.topk(opts.top_k).values[:, -1:], float("-inf"))
    ordered, order = logits.sort(-1, descending=True)
    p = ordered.softmax(-1)
    kept = p.masked_fill(p.cumsum(-1) - p > opts.top_p, 0.0)
    kept = torch.zeros_like(kept).scatter(-1, order, kept)
    return kept / kept.sum(-1, keepdim=True)


@pytest.mark.parametrize("kw", [dict(top_p=0.9), dict(top_k=20), dict(top_k=50, top_p=0.5),
                                dict(top_p=0.999)])  # the last nucleus is wider than the candidates
def test_draws_follow_the_nucleus_a_full_sort_gives(kw):
    rows = torch.randn(32, 3000, generator=torch.Generator().manual_seed(0)) * 3
    opts = Options(temperature=0.7, seed=1, **kw)
    want = nucleus(rows, opts)
    sampler, n = Sampler(opts, "cpu"), 600
    counts = torch.zeros_like(rows)
    for _ in range(n):
        counts.scatter_add_(-1, sampler.sample(rows).unsqueeze(-1), torch.ones(32, 1))
    assert counts[want == 0].sum() == 0  # never a token outside the nucleus
    if (want > 0).sum(-1).max() <= 200:  # 600 draws land within a total variation of 0.3 of the nucleus
        assert 0.5 * (counts / n - want).abs().sum(-1).max() < 0.3
    else:  # a nucleus wider than the candidates: tokens ranked below them are drawn too
        ranks = rows.argsort(-1, descending=True).argsort(-1)
        assert counts[ranks >= CANDIDATES].sum() > 0


def test_a_batch_samples_as_the_engine_does():
    tok = bpe_tokenizer()
    engine = Engine(tiny_model("llama", len(tok)), tok)
    opts = Options(max_new_tokens=30, temperature=1.0, top_p=0.9, seed=3)
    batch = engine.generate_batch(["Give me three tips."], opts, batch_size=1)[0]
    assert batch.text == engine.generate("Give me three tips.", "sequential", opts).text
    assert batch.text != engine.generate_batch(["Give me three tips."], Options(max_new_tokens=30), 1)[0].text

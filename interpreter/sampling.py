"""Where a request's tokens come from: the model's logits (`Sampler`) or a fixed script (`Script`, replays)."""

from __future__ import annotations

import torch

from .layout import MAIN, encode, pieces
from .parser import parse


class Context(list):
    """What a thread's repetition penalty counts: the tokens it has seen, in order. A child (a block, a pattern item)
    starts from its parent's (`fork`) and gives back only its own part when the parent takes it in (`own`)."""

    def __init__(self, tokens=(), inherited: int = 0):
        super().__init__(tokens)
        self.inherited = inherited  # how much of it is the parent's

    @classmethod
    def of_prompt(cls, prompt, spared: set[int]) -> Context:
        return cls(t for t in prompt if t not in spared)

    def fork(self, extra=()) -> Context:
        return Context([*self, *extra], len(self))

    def own(self) -> list[int]:
        return self[self.inherited:]


def penalize(rows: torch.Tensor, threads, penalty: float) -> torch.Tensor:
    """The repetition penalty of HF's `generate` and vLLM over each thread's `context` (the tokens it has seen): a
    seen token is made less likely, a positive logit divided by `penalty` and a negative one multiplied. A thread
    writing a tag's fixed parts (`in_tag`) draws unpenalized: every promise repeats the pieces of the one before.
    A topic is text: counted, and penalized, so that main does not give two blocks one topic."""
    rows = rows.float().clone()
    for i, th in enumerate(threads):
        if th.context and not th.in_tag:
            ids = torch.tensor(sorted(set(th.context)), device=rows.device)
            seen = rows[i, ids]
            rows[i, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return rows


CANDIDATES = 256  # a 0.9 nucleus of a small model at temperature 0.7-1 holds far fewer tokens


class Sampler:
    """Draws from the model: greedy, or temperature with top-k/top-p and a seeded generator; with a
    repetition penalty first where the options set one."""

    def __init__(self, opts, device):
        self.opts = opts
        self.generator = None
        if opts.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(opts.seed if opts.seed is not None else torch.seed())

    def draw(self, rows: torch.Tensor, threads) -> list[int]:
        if self.opts.repetition_penalty != 1.0:
            rows = penalize(rows, threads, self.opts.repetition_penalty)
        return self.sample(rows).tolist()

    def sample(self, rows: torch.Tensor) -> torch.Tensor:
        """One token id for each row of logits, by the options' temperature, top-k and top-p."""
        o = self.opts
        if o.temperature <= 0:
            return rows.argmax(-1)
        probs = (rows.float() / o.temperature).softmax(-1)
        if not o.top_k and o.top_p == 1.0:
            return self._pick(probs)
        # top-k and top-p draw from a few hundred candidates: sorting and sampling a whole 49k-token row for every
        # thread took half of a batched step on a CPU. Exact: the full sort is taken where the nucleus is wider.
        top, ids = probs.topk(min(o.top_k or CANDIDATES, probs.shape[-1]), dim=-1)
        if o.top_k:
            top = top / top.sum(-1, keepdim=True)  # top-p within the top k, as HF's generate applies them
        if o.top_p < 1.0:
            cum = top.cumsum(-1)
            if not o.top_k and bool((cum[:, -1] < o.top_p).any()):
                top, ids = probs.sort(dim=-1, descending=True)
                cum = top.cumsum(-1)
            top = top.masked_fill(cum - top > o.top_p, 0.0)  # the smallest set reaching top_p
        return ids.gather(-1, self._pick(top).unsqueeze(-1)).squeeze(-1)

    def _pick(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(weights, 1, generator=self.generator).squeeze(-1)


class Script:
    """Replays fixed tokens per thread (None = greedy choice); main ends when its script does."""

    def __init__(self, main: list[int | None], blocks: list[list[int | None]], end_id: int):
        self.main, self.blocks, self.end_id = main, blocks, end_id

    @classmethod
    def from_stored(cls, stored: str, tokenizer, end_id: int) -> Script:
        """The tokens decoding `stored` would draw: every thread's tokens but the forced `<async>`."""
        main: list[int] = []
        blocks: list[list[int]] = []
        for piece in pieces(parse(stored)):
            ids = encode(tokenizer, piece.text)
            if piece.thread == MAIN:
                main += ids
            elif piece.kind == "open":
                blocks.append([])
            else:
                blocks[-1] += ids
        return cls(main, blocks, end_id)

    def draw(self, rows: torch.Tensor, threads) -> list[int]:
        greedy = rows.argmax(-1).tolist()
        out = []
        for th, g in zip(threads, greedy):
            script = self.main if th.tid == MAIN else (self.blocks[th.tid - 1:th.tid] or [[]])[0]
            token = script[th.drawn] if th.drawn < len(script) else self.end_id
            out.append(g if token is None else token)
        return out

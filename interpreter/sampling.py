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
        o = self.opts
        if o.repetition_penalty != 1.0:
            rows = penalize(rows, threads, o.repetition_penalty)
        if o.temperature <= 0:
            return rows.argmax(-1).tolist()
        logits = rows.float() / o.temperature
        if o.top_k > 0:
            kth = logits.topk(min(o.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if o.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > o.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator).squeeze(-1).tolist()


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

"""What a request asks of the engine (`Options`) and what it gets back (`Result`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .layout import Layout

MAX_SEED = 2**63  # torch generators take seeds below this


@dataclass
class Options:
    max_new_tokens: int = 512  # every thread's drawn tokens together
    max_thread_tokens: int = 256  # one async thread's drawn tokens
    max_threads: int = 8  # async threads decoding at once; later promises wait their turn
    max_promises: int = 32  # forks per answer; further promises are dropped (guarded: never begun)
    max_promise_tokens: int = 1024  # a promise's N is clamped to this
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    # HF's and vLLM's repetition_penalty (1 = off): what a thread has seen, prompt included, is made less likely;
    # tags (but their topics) and end tokens are never penalized (interpreter.sampling.penalize)
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings, matched in the main thread's text
    guard_tags: bool = True  # pasta mode: redraw a token that would write an invalid tag (interpreter.guard)
    stop_loops: bool = False  # end a thread whose text loops (interpreter.repetition.loops): main with "loop"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_thread_tokens", "max_threads", "max_promise_tokens"):
            if getattr(self, name) < 1:  # max_threads 0 would cut the answer at its first promise
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63), not {self.seed}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0 (got "
                             f"{self.temperature}, {self.top_p}, {self.top_k}, {self.repetition_penalty})")


@dataclass
class Result:
    text: str  # what the user reads
    stored: str  # the stored form, tags in place
    mode: str
    finish_reason: str  # "stop", "length", "cancelled", "timeout" or "loop" (Options.stop_loops)
    prompt_tokens: int
    tokens: int  # every token drawn (the end token included) plus forced openings
    thread_tokens: list[int]  # drawn tokens per thread, main first
    steps: int  # forward passes, prefill included
    threads: int  # async threads forked
    wall_time: float  # from the start of its prefill to its end
    prefill_time: float
    repairs: list[str] = field(default_factory=list)
    steered: int = 0  # draws the tag guard replaced
    looped: int = 0  # threads ended in a loop (Options.stop_loops), main included
    logits: list[tuple[int, torch.Tensor]] | None = None  # (thread, logits row) per draw, if recorded
    layout: Layout | None = None  # what was fed and drawn, in arrival order (record_layout): to train on

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_time if self.wall_time else 0.0

    def summary(self) -> dict:
        return {"text": self.text, "stored": self.stored, "mode": self.mode, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "thread_tokens": self.thread_tokens,
                "steps": self.steps, "threads": self.threads, "wall_time": round(self.wall_time, 4),
                "prefill_time": round(self.prefill_time, 4), "repairs": self.repairs,
                "steered": self.steered, "looped": self.looped}

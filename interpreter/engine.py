"""The asynchronous decoding engine: requests step together, one forward pass per step.

    add() ──▶ waiting ──admit: prefill, join the batch──▶ running ──▶ finished
                              │
    step():  schedule (each request's next tokens) → execute (ONE forward pass, a KV row
             per request) → update (each request takes the rows it drew; the finished leave)

Every entry point drives this one loop: `generate`/`stream` step until their request ends,
`generate_many` until all its answers end, and the server's `AsyncEngine` steps for as long as
there is work, so requests from many clients decode together (continuous batching). The engine
is not thread-safe: one thread steps it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

import torch

from .guard import TagGuard
from .hf_generate import generate_batch
from .kv import KVBatch, end_token_ids
from .layout import encode, prompt_ids
from .options import Options, Result
from .parser import parse
from .request import Request
from .sampling import Script
from .tag_tokens import TAG_PIECES
from .tags import OPEN_TAG

PHASES = ("prefill", "schedule", "forward", "update")  # forward: masks, the model's pass, freeing columns


class Engine:
    """Decodes requests with Pasta-Lang threads (mode "pasta") or plainly ("sequential"), up to
    `max_batch` of them together; more wait their turn in arrival order."""

    def __init__(self, model, tokenizer, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.end_ids = end_token_ids(model, tokenizer)
        self.async_ids = encode(tokenizer, OPEN_TAG)
        # the repetition penalty spares the end (the chat template's prompt holds it: answers would run on) and
        # tags written as one token
        self.unpenalized = self.end_ids | {ids[0] for p in TAG_PIECES if len(ids := encode(tokenizer, p)) == 1}
        self.guard = TagGuard(tokenizer, self.end_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.kv = KVBatch(model)
        self.timing = dict.fromkeys(PHASES, 0.0)  # seconds spent in each phase of `step`, summed
        self.steps = 0

    def prompt_ids(self, prompt: str | list[dict] | list[int]) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    # -- the loop ----------------------------------------------------------------------------------
    def add(self, prompt, mode: str = "pasta", options: Options | None = None, source=None,
            record_logits: bool = False, cancel=None, deadline: float | None = None,
            record_layout: bool = False) -> Request:
        """Queues a request (a prompt, messages or ids); `step` decodes it. `cancel`: anything with
        is_set(); `deadline`: a time.perf_counter() after which it ends with finish_reason "timeout";
        `record_layout`: its Result carries the Layout of what it fed and drew (to train on)."""
        request = Request(self, self.prompt_ids(prompt), mode, options, source, record_logits, cancel, deadline,
                          record_layout)
        self.waiting.append(request)
        return request

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """One engine step: admit waiting requests, schedule → execute → update; returns those that ended."""
        self.steps += 1
        clock = time.perf_counter()
        ended = self._admit()
        clock = self._tick("prefill", clock)
        feeds, live = [], []
        for request in self.running:
            feed = request.schedule()
            if feed is None:
                ended.append(request)
            else:
                feeds.append(feed)
                live.append(request)
        if len(live) < len(self.running):
            self.kv.drop([r.layout for r in self.running if r.done])
            self.running = live
        clock = self._tick("schedule", clock)
        if live:
            rows = self.kv.step(feeds)
            clock = self._tick("forward", clock)
            for request, r in zip(live, rows, strict=True):
                request.update(r)
            self._tick("update", clock)
        return ended

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timing[phase] += now - since
        return now

    def _admit(self) -> list[Request]:
        """Prefills waiting requests while the batch has room; answers to one prompt share one prefill.
        Returns those that ended before starting (cancelled or past their deadline while waiting)."""
        ended, joining = [], []
        while self.waiting and len(self.running) + len(joining) < self.max_batch:
            request = self.waiting.popleft()
            if request.cancelled:
                request.abort("cancelled")
                ended.append(request)
            elif request.deadline is not None and time.perf_counter() > request.deadline:
                request.abort("timeout")
                ended.append(request)
            else:
                joining.append(request)
        groups: dict[tuple[int, ...], list[Request]] = {}
        for request in joining:
            groups.setdefault(tuple(request.prompt_ids), []).append(request)
        for ids, group in groups.items():
            started = time.perf_counter()
            row = self.kv.prefill(list(ids), [r.layout for r in group])
            took = time.perf_counter() - started
            for request in group:
                request.begin(row, started, took)
            self.running += group
        return ended

    def reset(self) -> list[Request]:
        """Drops every request and the cache (after a step failed); returns the requests dropped."""
        dropped = [*self.waiting, *self.running]
        self.waiting.clear()
        self.running, self.kv = [], KVBatch(self.model)
        return dropped

    def _run(self, requests: list[Request]) -> None:
        while not all(r.done for r in requests):
            self.step()

    # -- entry points --------------------------------------------------------------------------------
    def generate(self, prompt, mode: str = "pasta", options: Options | None = None, source=None,
                 record_logits: bool = False, cancel=None, record_layout: bool = False) -> Result:
        request = self.add(prompt, mode, options, source, record_logits, cancel, record_layout=record_layout)
        self._run([request])
        return request.result()

    def stream(self, prompt, mode: str = "pasta", options: Options | None = None, source=None,
               record_logits: bool = False, cancel=None, watch: bool = False) -> Iterator[dict]:
        """Yields {"delta": text} as the stitched answer grows in reading order, then {"result": Result}.

        The deltas add up to the result's text. `cancel` (anything with is_set(), e.g. a threading.Event)
        stops decoding at the next step, as does closing the generator. `watch` also yields
        {"threads": [...]} after every step, for live displays."""
        request = self.add(prompt, mode, options, source, record_logits, cancel)
        try:
            while not request.done:
                self.step()
                delta = request.take_delta()
                if delta:
                    yield {"delta": delta}
                if watch and not request.done:
                    yield {"threads": request.snapshot()}
            yield {"result": request.result()}
        finally:
            if not request.done:  # the caller went away: free the request's row
                request.cancel()
                self._run([request])

    def generate_many(self, prompt, options: list[Options], sources: list | None = None,
                      record_layout: bool = False) -> list[Result]:
        """Several answers to one prompt in pasta mode, decoded together (best-of-N sampling): one prefill,
        then a batch row per answer, so each answer is what `generate` with its options (and source) gives.
        A result's wall_time is the time until its answer finished."""
        requests = [self.add(prompt, "pasta", o, s, record_layout=record_layout)
                    for o, s in zip(options, sources or [None] * len(options), strict=True)]
        self._run(requests)
        return [r.result() for r in requests]

    def replay(self, prompt, stored: str, mode: str = "pasta", record_logits: bool = False) -> Result:
        """Forces a stored sequence through the engine on the schedule decoding it would have had
        (mode "sequential": its stitched form, one token a step)."""
        end = min(self.end_ids)
        if mode == "sequential":
            script = Script(encode(self.tokenizer, parse(stored).stripped), [], end)
        else:
            script = Script.from_stored(stored, self.tokenizer, end)
        opts = Options(max_new_tokens=10**9, max_thread_tokens=10**9, max_threads=10**9, max_promises=10**9,
                       max_promise_tokens=10**9)
        return self.generate(prompt, mode, opts, source=script, record_logits=record_logits)

    def generate_batch(self, prompts: list, options: Options | None = None, batch_size: int = 8) -> list[Result]:
        """Sequential mode for many prompts through `model.generate` (interpreter.hf_generate)."""
        return generate_batch(self, prompts, options or Options(), batch_size)

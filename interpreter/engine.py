"""The asynchronous decoding engine: Pasta-Lang tags become threads over one shared KV cache.

Each step is ONE forward pass over the next token of every running thread (plus the forced
`<async>` of a thread forked this step). Tokens enter the cache in arrival order; their
positions and what they may attend to come from `ThreadLayout`, the same code that lays out
training sequences, so decoding runs the model that training taught.

Scheduling, per PASTA-LANG.md: a promise forks a thread as its last token enters the cache;
a thread ends at `</async>` (that token still enters the cache, for whoever syncs); after
`<sync/>` main draws its next token and holds it until every forked thread has ended; the end
of main is an implicit sync. Model output that breaks the rules is repaired, never fatal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from .detok import Detokenizer
from .guard import TagGuard
from .layout import MAIN, SlotCounter, ThreadLayout, bits_to_rows, encode, pieces, prompt_ids, turn_end_id
from .parser import parse
from .repetition import LOOP_TAIL, loops
from .tags import ASYNC_CLOSE, PROMISE, SYNC, BadTag, Lexer, Tag, Text

RUNNING, QUEUED, CLOSING, WAITING, DONE = "running", "queued", "closing", "waiting", "done"


@dataclass
class Options:
    max_new_tokens: int = 512  # every thread's drawn tokens together
    max_thread_tokens: int = 256  # one async thread's drawn tokens
    max_threads: int = 8  # async threads decoding at once; later promises wait their turn
    max_promises: int = 32  # forks per answer; further promises are dropped
    max_promise_tokens: int = 1024  # a promise's N is clamped to this
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings, matched in the main thread's text
    guard_tags: bool = True  # pasta mode: redraw a token that would write an invalid tag (interpreter.guard)
    stop_loops: bool = False  # end a thread whose text loops (interpreter.repetition.loops): main with "loop"


@dataclass
class Result:
    text: str  # what the user reads
    stored: str  # the stored form, tags in place
    mode: str
    finish_reason: str  # "stop", "length", "cancelled" or "loop" (main repeated itself; Options.stop_loops)
    prompt_tokens: int
    tokens: int  # every token drawn (the end token included) plus forced openings
    thread_tokens: list[int]  # drawn tokens per thread, main first
    steps: int  # forward passes, prefill included
    threads: int  # async threads forked
    wall_time: float
    prefill_time: float
    repairs: list[str] = field(default_factory=list)
    steered: int = 0  # draws the tag guard replaced
    looped: int = 0  # threads ended in a loop (Options.stop_loops), main included
    logits: list[tuple[int, torch.Tensor]] | None = None  # (thread, logits row) per draw, if recorded

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.wall_time if self.wall_time else 0.0

    def summary(self) -> dict:
        return {"text": self.text, "stored": self.stored, "mode": self.mode, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "thread_tokens": self.thread_tokens,
                "steps": self.steps, "threads": self.threads, "wall_time": round(self.wall_time, 4),
                "prefill_time": round(self.prefill_time, 4), "repairs": self.repairs,
                "steered": self.steered, "looped": self.looped}


class Thread:
    def __init__(self, tid: int, detok: Detokenizer):
        self.tid = tid
        self.detok = detok
        self.lexer = Lexer()
        self.state = RUNNING
        self.feed: list[int] = []  # tokens to enter the cache next step
        self.drawn = 0
        self.items: list[tuple] = []  # main: ("text", s) | ("promise", raw, block) | ("sync", raw); block: ("text", s)
        self.close_raw: str | None = None  # a block's "</async>", None if it was cut
        self.forks: list[Tag] = []  # main: promises completed by the token in `feed`
        self.sync_next = False  # main: the token in `feed` completes a sync
        self.held: int | None = None  # main: token drawn after a sync, fed once the blocks end

    def text(self) -> str:
        return "".join(i[1] for i in self.items if i[0] == "text")

    def tail(self, chars: int) -> str:
        """At least the last `chars` characters of text() (all of it if shorter), without joining it all:
        the loop check runs on every token."""
        out, n = [], 0
        for item in reversed(self.items):
            if item[0] == "text":
                out.append(item[1])
                n += len(item[1])
                if n >= chars:
                    break
        return "".join(reversed(out))


class Sampler:
    """Draws from the model: greedy, or temperature with top-k/top-p and a seeded generator."""

    def __init__(self, opts: Options, device):
        self.opts = opts
        self.generator = None
        if opts.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(opts.seed if opts.seed is not None else torch.seed())

    def draw(self, rows: torch.Tensor, threads: list[Thread]) -> list[int]:
        o = self.opts
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

    def draw(self, rows: torch.Tensor, threads: list[Thread]) -> list[int]:
        greedy = rows.argmax(-1).tolist()
        out = []
        for th, g in zip(threads, greedy):
            script = self.main if th.tid == MAIN else (self.blocks[th.tid - 1:th.tid] or [[]])[0]
            token = script[th.drawn] if th.drawn < len(script) else self.end_id
            out.append(g if token is None else token)
        return out


def end_token_ids(model, tokenizer) -> set[int]:
    ids = {turn_end_id(tokenizer)}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, list) else [value])
    return ids


def new_cache(model):
    from transformers import DynamicCache  # lazily: importing interpreter stays light (CLI, remote client)

    return DynamicCache(config=model.config)


def forward(model, cache, slots: int, ids: list[int], pos: list[int], vis: list[int] | None,
            keep: list[int]) -> torch.Tensor:
    """One step: `ids` enter the cache at positions `pos`, token i seeing the slots in bitset vis[i]
    (`slots` = cache length after the step); returns the logits rows of the tokens in `keep`."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    mask = None  # no mask when every new token sees the whole cache (prefill, sequential, main alone)
    full = (1 << slots) - 1
    if vis is not None and any(v != full for v in vis):
        allowed = torch.from_numpy(bits_to_rows(vis, slots)).to(device)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        mask = mask[None, None]
    out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([pos], device=device),
                attention_mask=mask, cache=cache, use_cache=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device))
    return out.logits[0]


class Engine:
    """Decodes one request at a time with Pasta-Lang threads (mode "pasta") or plainly ("sequential")."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.end_ids = end_token_ids(model, tokenizer)
        self.async_ids = encode(tokenizer, "<async>")
        self.guard = TagGuard(tokenizer, self.end_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    # -- prompts ---------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | list[dict] | list[int]) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    # -- public entry points -----------------------------------------------------------------
    def generate(self, prompt, mode: str = "pasta", options: Options | None = None, source=None,
                 record_logits: bool = False, cancel=None) -> Result:
        result = None
        for update in self.stream(prompt, mode, options, source, record_logits, cancel=cancel):
            result = update.get("result", result)
        return result

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

    @torch.inference_mode()
    def generate_many(self, prompt, options: list[Options], sources: list | None = None) -> list[Result]:
        """Several answers to one prompt in pasta mode, decoded together (best-of-N sampling).

        The prompt is prefilled once into one shared KV cache; each step is ONE forward pass over
        the next tokens of every answer's threads, and an answer's threads see the prompt and their
        own answer only, so each answer is what `generate` with its options (and source) would
        give. A result's wall_time is the time until its answer finished; prefill_time is shared."""
        ids = self.prompt_ids(prompt)
        cache, counter = new_cache(self.model), SlotCounter()
        runs = [_Run(self, ids, "pasta", o, s, False, cache, counter)
                for o, s in zip(options, sources or [None] * len(options), strict=True)]
        start = time.perf_counter()
        rows = runs[0].prefill()
        for run in runs:
            run.begin(rows, time.perf_counter() - start)
        results: list[Result | None] = [None] * len(runs)
        live = list(range(len(runs)))
        while live:
            step_ids, pos, vis, keep, drawing = [], [], [], [], []
            for i in live:  # slots are handed out in this order: the tokens enter the cache in it too
                batch = runs[i].next_step()
                if batch is None:
                    results[i] = runs[i]._result(time.perf_counter() - start)
                    continue
                keep += [len(step_ids) + j for _, j in batch[3]]
                step_ids += batch[0]
                pos += batch[1]
                vis += batch[2]
                drawing.append((i, [th for th, _ in batch[3]]))
            live = [i for i, _ in drawing]
            if not live:
                break
            rows = forward(self.model, cache, counter.count, step_ids, pos, vis, keep)
            k = 0
            for i, threads in drawing:
                runs[i].steps += 1
                runs[i]._accept(threads, rows[k:k + len(threads)])
                k += len(threads)
        return results

    @torch.inference_mode()
    def generate_batch(self, prompts: list, options: Options | None = None, batch_size: int = 8) -> list[Result]:
        """Sequential mode for many prompts at once, for throughput (seed answers, baselines).

        Left-padded batches through `model.generate`; a test proves its greedy tokens equal
        this engine's sequential mode. Results carry no per-request timing (wall_time is the
        batch's share)."""
        opts = options or Options()
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(self.end_ids)
        sampling = dict(do_sample=opts.temperature > 0)
        if opts.temperature > 0:
            sampling.update(temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k or None)
            if opts.seed is not None:
                torch.manual_seed(opts.seed)
        results = []
        for start in range(0, len(prompts), batch_size):
            ids = [self.prompt_ids(p) for p in prompts[start:start + batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
            attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
            began = time.perf_counter()
            loop_stop = _LoopStop(tok, width, self.end_ids) if opts.stop_loops else None
            out = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                      max_new_tokens=opts.max_new_tokens, eos_token_id=sorted(self.end_ids),
                                      pad_token_id=pad, stopping_criteria=[loop_stop] if loop_stop else None,
                                      **sampling)
            share = (time.perf_counter() - began) / len(ids)
            for k, (prompt, row) in enumerate(zip(ids, out[:, width:].tolist())):
                looped = loop_stop.stopped.get(k) if loop_stop else None
                drawn = looped or next((i + 1 for i, t in enumerate(row) if t in self.end_ids), None)
                body = row[:drawn] if looped else row[:drawn - 1] if drawn else row
                text = self.tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                for s in opts.stop:
                    text = text[:text.find(s)] if s in text else text
                results.append(Result(text=text, stored=text, mode="sequential",
                                      finish_reason="loop" if looped else "stop" if drawn else "length",
                                      prompt_tokens=len(prompt), tokens=drawn or len(row),
                                      thread_tokens=[drawn or len(row)], steps=drawn or len(row), threads=0,
                                      wall_time=share, prefill_time=0.0, looped=int(bool(looped))))
        return results

    @torch.inference_mode()
    def stream(self, prompt, mode: str = "pasta", options: Options | None = None, source=None,
               record_logits: bool = False, cancel=None, watch: bool = False) -> Iterator[dict]:
        """Yields {"delta": text} as the stitched answer grows in reading order, then {"result": Result}.

        `cancel` (anything with is_set(), e.g. a threading.Event) stops decoding at the next step,
        as does closing the generator: a client that went away frees its work. `watch` also yields
        {"threads": [...]} after every step, for live displays."""
        if mode not in ("pasta", "sequential"):
            raise ValueError(f"mode must be 'pasta' or 'sequential', not {mode!r}")
        run = _Run(self, self.prompt_ids(prompt), mode, options or Options(), source, record_logits)
        yield from run.loop(cancel, watch)


class _LoopStop(StoppingCriteria):
    """Options.stop_loops for `model.generate`: a row ends at the token where its text starts to loop, as
    the engine's main thread does (the same streaming detokenizer, one new token a call). `stopped` maps
    row → tokens drawn by then."""

    def __init__(self, tokenizer, prompt_width: int, end_ids: set[int]):
        self.tok, self.width, self.end_ids = tokenizer, prompt_width, end_ids
        self.detoks: dict[int, Detokenizer] = {}
        self.tails: dict[int, str] = {}
        self.stopped: dict[int, int] = {}
        self.ended: set[int] = set()

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for k, token in enumerate(input_ids[:, -1].tolist()):
            if k in self.ended or k in self.stopped:
                continue
            if token in self.end_ids:
                self.ended.add(k)
                continue
            detok = self.detoks.setdefault(k, Detokenizer(self.tok))
            self.tails[k] = (self.tails.get(k, "") + detok.push(token))[-LOOP_TAIL:]
            if loops(self.tails[k]):
                self.stopped[k], done[k] = input_ids.shape[1] - self.width, True
        return done


class _Run:
    """The state of one request."""

    def __init__(self, engine: Engine, prompt_ids, mode, opts, source, record, cache=None,
                 counter: SlotCounter | None = None):
        self.e, self.opts, self.mode = engine, opts, mode
        self.prompt_ids = prompt_ids
        self.source = source or Sampler(opts, engine.device)
        guarded = mode == "pasta" and opts.guard_tags and isinstance(self.source, Sampler)  # never a replay
        self.guard = engine.guard if guarded else None
        self.steered = 0
        self.looped = 0
        self.cache = cache if cache is not None else new_cache(engine.model)
        self.layout = ThreadLayout(counter)  # a counter shared with other answers: one cache for all
        self.main = Thread(MAIN, Detokenizer(engine.tokenizer))
        self.blocks: list[Thread] = []
        self.promised = 0  # promises accepted (blocks forked or about to be)
        self.total = 0  # tokens drawn by all threads
        self.forced = 0  # forced <async> tokens
        self.prefill_time = 0.0
        self.steps = 0
        self.finish = "stop"
        self.repairs: list[str] = []
        self.logits = [] if record else None
        self.sent = 0  # characters of the stitched answer already streamed

    # -- the loop ------------------------------------------------------------------------------
    def loop(self, cancel=None, watch: bool = False) -> Iterator[dict]:
        start = time.perf_counter()
        self.begin(self.prefill(), time.perf_counter() - start)
        while True:
            delta = self._stitched(committed=True)[self.sent:]
            if delta:
                self.sent += len(delta)
                yield {"delta": delta}
            if watch:
                yield {"threads": self.snapshot()}
            batch = self.next_step(cancel)
            if batch is None:
                break
            ids, pos, vis, draw = batch
            rows = self._forward(ids, pos, vis, [i for _, i in draw])
            self._accept([th for th, _ in draw], rows)
        wall = time.perf_counter() - start
        tail = self._stitched(committed=False)[self.sent:]
        if tail:
            yield {"delta": tail}
        yield {"result": self._result(wall)}

    def prefill(self) -> torch.Tensor:
        """The prompt enters the first slots of the cache (shared by answers decoded together: one
        prefill for all); returns the logits row that draws main's first token."""
        n = len(self.prompt_ids)
        for _ in range(n):
            self.layout.counter.take()
        return forward(self.e.model, self.cache, n, self.prompt_ids, list(range(n)), None, [n - 1])

    def begin(self, rows: torch.Tensor, prefill_time: float) -> None:
        """Main sees the prompt and draws its first token from the prefill's logits."""
        self.layout.see_prompt(len(self.prompt_ids))
        self.steps, self.prefill_time = 1, prefill_time
        self._accept([self.main], rows)

    def next_step(self, cancel=None):
        """The tokens of the next step (ids, positions, visibility, [(thread, index) drawing]) after the
        budget and `cancel` are enforced; None when the answer is finished."""
        if cancel is not None and cancel.is_set():
            self._cut_everything("cancelled")
        elif self.total >= self.opts.max_new_tokens:
            self._cut_everything("length")
        return self._assemble()

    def _forward(self, ids: list[int], pos: list[int], vis: list[int] | None, keep: list[int]) -> torch.Tensor:
        self.steps += 1
        return forward(self.e.model, self.cache, self.layout.slots, ids, pos, vis, keep)

    def _assemble(self):
        """The tokens of the next step, in cache order, or None when every thread is finished."""
        ids, pos, vis, draw = [], [], [], []

        def put(th: Thread, token: int, drawing: bool) -> None:
            _, p, v = self.layout.append(th.tid)
            ids.append(token)
            pos.append(p)
            vis.append(v)
            if drawing:
                draw.append((th, len(ids) - 1))

        for b in self.blocks:  # blocks first: a sync released this step must see their last tokens
            if b.state in (RUNNING, CLOSING) and b.feed:
                for t in b.feed[:-1]:
                    put(b, t, False)
                put(b, b.feed[-1], b.state == RUNNING)
                b.feed = []
                if b.state == CLOSING:
                    b.state = DONE
        main = self.main
        if main.state == WAITING and all(b.state == DONE for b in self.blocks):
            self.layout.sync()
            main.state, main.feed, main.held = RUNNING, [main.held], None
        if main.state == RUNNING and main.feed:
            put(main, main.feed[0], True)
            main.feed = []
            for tag in main.forks:
                tid = self.layout.fork(min(tag.tokens, self.opts.max_promise_tokens))
                block = Thread(tid, Detokenizer(self.e.tokenizer, self.e.async_ids))
                block.state, block.feed = QUEUED, list(self.e.async_ids)
                self.blocks.append(block)
            main.forks = []
        running = sum(b.state == RUNNING for b in self.blocks)
        for b in self.blocks:
            if b.state == QUEUED and running < self.opts.max_threads:
                b.state = RUNNING
                running += 1
                for t in b.feed[:-1]:
                    put(b, t, False)
                put(b, b.feed[-1], True)
                self.forced += len(b.feed)
                b.feed = []
        if not ids:
            return None
        return ids, pos, vis, draw

    # -- what the threads drew -----------------------------------------------------------------
    def _accept(self, threads: list[Thread], rows: torch.Tensor) -> None:
        if self.logits is not None:
            self.logits += [(th.tid, rows[i].float().clone()) for i, th in enumerate(threads)]
        for i, (th, token) in enumerate(zip(threads, self.source.draw(rows, threads))):
            if self.guard is not None:
                token, steered = self.guard.choose(rows[i], th, token, self.source)
                self.steered += steered
            th.drawn += 1
            self.total += 1
            if th.tid == MAIN:
                self._main_drew(th, token)
            else:
                self._block_drew(th, token)

    def _main_drew(self, main: Thread, token: int) -> None:
        if token in self.e.end_ids:  # the end is an implicit sync: wait for the blocks, feed nothing
            self._end_main()
            return
        if main.sync_next:  # the token after a sync waits for the blocks
            main.sync_next = False
            main.state, main.held = WAITING, token
        else:
            main.feed = [token]
        self._main_text_or_tags(main, token)

    def _main_text_or_tags(self, main: Thread, token: int) -> None:
        text = main.detok.push(token)
        if self.mode == "sequential":
            self._main_text(main, text)
        else:
            self._main_events(main, main.lexer.feed(text))

    def _main_events(self, main: Thread, events) -> None:
        for ev in events:
            if main.state == DONE:
                return
            if isinstance(ev, Text):
                self._main_text(main, ev.text)
            elif isinstance(ev, BadTag):
                self._drop(main, f"main: dropped malformed tag {ev.raw[:40]!r} ({ev.message})")
            elif ev.kind == PROMISE:
                if self.promised >= self.opts.max_promises:
                    self._drop(main, f"main: dropped promise {ev.topic!r}: more than {self.opts.max_promises}")
                    continue
                self.promised += 1
                main.forks.append(ev)
                main.items.append(("promise", ev.raw, self.promised))
            elif ev.kind == SYNC:
                main.items.append(("sync", ev.raw))
                main.sync_next = True
            else:
                self._drop(main, f"main: dropped {ev.raw} (only an async thread writes it)")

    def _main_text(self, main: Thread, text: str) -> None:
        if not text:
            return
        main.items.append(("text", text))
        if self.opts.stop_loops and main.state != DONE and loops(main.tail(LOOP_TAIL)):
            self.finish, self.looped = "loop", self.looped + 1
            self._end_main()
            return
        if self.opts.stop:
            so_far = main.text()
            hits = [so_far.find(s) for s in self.opts.stop if s in so_far]
            if hits:
                cut = len(so_far) - min(hits)
                while cut > 0:  # trim the stop string off the tail of main's text items
                    kind, value = main.items[-1][0], main.items[-1][1]
                    if kind != "text":
                        main.items.pop()
                        continue
                    keep = max(0, len(value) - cut)
                    cut -= len(value) - keep
                    main.items[-1] = ("text", value[:keep])
                    if not keep:
                        main.items.pop()
                self._defuse(main)  # what the stop string cut may end in a tag opener
                self._end_main()

    def _end_main(self) -> None:
        main = self.main
        if main.state == DONE:
            return
        main.state = DONE
        held = main.detok.flush()  # a character cut in half by the end, as model.generate would show it
        if self.mode == "sequential":
            self._main_text(main, held)
        else:
            for ev in main.lexer.feed(held) + main.lexer.close():
                if isinstance(ev, Text):
                    main.items.append(("text", ev.text))
                else:
                    self._drop(main, f"main: dropped unfinished tag {ev.raw[:40]!r}")
        for _ in main.forks:  # promised by a token that never entered the cache: the block stays empty
            block = Thread(len(self.blocks) + 1, Detokenizer(self.e.tokenizer))
            block.state = DONE
            self.blocks.append(block)
            self._repair(f"block {block.tid}: main ended before it could start; left empty")
        main.feed, main.forks, main.sync_next, main.held = [], [], False, None

    def _block_drew(self, block: Thread, token: int) -> None:
        if token in self.e.end_ids:
            self._cut_block(block, "ended the answer without </async>")
            return
        block.feed = [token]
        for ev in block.lexer.feed(block.detok.push(token)):
            if block.close_raw is not None:
                if not (isinstance(ev, Text) and not ev.text.strip()):
                    self._repair(f"block {block.tid}: dropped text after </async>")
                continue
            if isinstance(ev, Text):
                block.items.append(("text", ev.text))
            elif isinstance(ev, Tag) and ev.kind == ASYNC_CLOSE:
                block.close_raw, block.state = ev.raw, CLOSING
            else:
                self._drop(block, f"block {block.tid}: dropped {ev.raw[:40]!r} (no nesting in async blocks)")
        if block.state == RUNNING and block.drawn >= self.opts.max_thread_tokens:
            self._cut_block(block, f"reached {self.opts.max_thread_tokens} tokens without </async>")
        elif block.state == RUNNING and self.opts.stop_loops and loops(block.tail(LOOP_TAIL)):
            self.looped += 1
            self._cut_block(block, "looped")

    def _cut_block(self, block: Thread, why: str) -> None:
        for ev in block.lexer.feed(block.detok.flush()) + block.lexer.close():
            if isinstance(ev, Text):
                block.items.append(("text", ev.text))
            else:
                self._drop(block, f"block {block.tid}: dropped unfinished tag {ev.raw[:40]!r}")
        block.state, block.feed = DONE, []
        self._repair(f"block {block.tid}: {why}; closed")

    def _cut_everything(self, why: str) -> None:
        self.finish = why
        for b in self.blocks:
            if b.state in (RUNNING, QUEUED):
                self._cut_block(b, "the answer reached max_new_tokens" if why == "length" else why)
            elif b.state == CLOSING:
                b.state, b.feed = DONE, []
        if self.main.state != DONE:
            self._end_main()

    def _repair(self, what: str) -> None:
        self.repairs.append(what)

    def _drop(self, th: Thread, what: str) -> None:
        """Drops a tag; a tag opener left dangling before it (`x </` + dropped + `async`) would join
        the next text into a new tag, so it goes too (a streamed reply may already show it)."""
        self._repair(what)
        self._defuse(th)

    def _defuse(self, th: Thread) -> None:
        if th.items and th.items[-1][0] == "text":
            text = th.items[-1][1]
            lexer = Lexer()
            lexer.feed(text)
            if lexer.pending:  # what could still become a tag
                th.items[-1] = ("text", text[:len(text) - len(lexer.pending)])
                if not th.items[-1][1]:
                    th.items.pop()
                self._repair(f"thread {th.tid}: removed {lexer.pending[:40]!r}, a tag opener left dangling")

    # -- output ----------------------------------------------------------------------------------
    def snapshot(self) -> list[dict]:
        """Every thread's state and text so far (main's text without its blocks)."""
        return [{"thread": th.tid, "state": th.state, "text": th.text(), "tokens": th.drawn}
                for th in (self.main, *self.blocks)]

    def _stitched(self, committed: bool, tags: bool = False) -> str:
        """The answer in reading order; `committed`: only what can no longer change place."""
        out = []
        for item in self.main.items:
            if item[0] == "text":
                out.append(item[1])
            elif item[0] == "sync":
                if tags:
                    out.append(item[1])
            else:
                block = self.blocks[item[2] - 1] if item[2] <= len(self.blocks) else None
                if tags:
                    out += [item[1], "<async>"]
                if block is not None:
                    out.append(block.text())
                if tags:
                    out.append(block.close_raw if block is not None and block.close_raw else "</async>")
                if committed and (block is None or block.state != DONE):
                    break
        return "".join(out)

    def _result(self, wall: float) -> Result:
        threads = [self.main, *self.blocks]
        return Result(
            text=self._stitched(committed=False), stored=self._stitched(committed=False, tags=True),
            mode=self.mode, finish_reason=self.finish, prompt_tokens=len(self.prompt_ids),
            tokens=self.total + self.forced,
            thread_tokens=[t.drawn for t in threads], steps=self.steps, threads=len(self.blocks),
            wall_time=wall, prefill_time=self.prefill_time, repairs=self.repairs, steered=self.steered,
            looped=self.looped, logits=self.logits)

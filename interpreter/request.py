"""One request's decoding: Pasta-Lang tags become threads, as a state machine the engine steps.

The engine asks a request for its tokens of the next step (`schedule`: ids, positions, visibility,
which draw), runs one forward pass for all requests, and hands each the logits rows of its draws
(`update`). Positions and visibility come from `ThreadLayout`, the same code that lays out training
sequences, so decoding runs the model that training taught.

Scheduling, per PASTA-LANG.md: a promise forks a thread as its last token enters the cache; a
thread ends at `</async>` (that token still enters the cache, for whoever syncs); after `<sync/>`
main draws its next token and holds it until every forked thread has ended; the end of main is an
implicit sync. Model output that breaks the rules is repaired, never fatal.
"""

from __future__ import annotations

import time

import torch

from .detok import Detokenizer
from .kv import Feed
from .layout import MAIN, LayoutRecorder, ThreadLayout, encode
from .options import Options, Result
from .parser import make_block, make_document, make_sync, render
from .repetition import LOOP_TAIL, loops
from .sampling import Context, Sampler
from .tags import ASYNC_CLOSE, PROMISE, SYNC, BadTag, Lexer, Tag, Text, in_topic

RUNNING, QUEUED, CLOSING, WAITING, DONE = "running", "queued", "closing", "waiting", "done"
# tokens left per running thread (main too) below which the budget runs short: about a sentence of a block, so the
# blocks can end theirs before max_new_tokens cuts them (TagGuard)
WRAP_TOKENS = 24
SETTLE_TAIL = 512  # characters of main's text checked for what may still be cut (a tag opener, a stop string)


class Thread:
    def __init__(self, tid: int, detok: Detokenizer):
        self.tid = tid
        self.detok = detok
        self.lexer = Lexer()
        self.state = RUNNING
        self.feed: list[int] = []  # tokens to enter the cache next step
        self.drawn = 0
        self.items: list[tuple] = []  # main: ("text", s) | ("promise", tag, block) | ("sync", raw); block: ("text", s)
        self.close_raw: str | None = None  # a block's "</async>", None if it was cut
        self.forks: list[Tag] = []  # main: promises completed by the token in `feed`
        self.sync_next = False  # main: the token in `feed` completes a sync
        self.held: int | None = None  # main: token drawn after a sync, fed once the blocks end
        self.room_for_promise = lambda: True  # main: whether the budget holds another promise (the request's rule)
        self.promised = 0  # a block: its promise's tokens
        self.budget_short = lambda: False  # a block: whether the answer's budget runs short (the request's rule)
        self.wrapped = False  # a block: the guard ends it early because the budget runs short
        # what the repetition penalty counts (Options.repetition_penalty): the prompt and the text this thread
        # sees, in order, tags (but their topics) and end tokens left out
        self.context = Context()

    @property
    def in_tag(self) -> bool:
        """Writing a tag's fixed parts, which the repetition penalty spares. A topic is text to it: a promise repeats
        the pieces of the one before, but a topic that repeats an earlier one makes its block repeat one too."""
        return bool(self.lexer.pending) and not in_topic(self.lexer.pending)

    def text(self) -> str:
        return "".join(i[1] for i in self.items if i[0] == "text")

    def promised_since_sync(self) -> bool:
        """main: whether a sync would wait for a block (a promise since its last sync)."""
        for item in reversed(self.items):
            if item[0] != "text":
                return item[0] == "promise"
        return False

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


class Request:
    """One prompt decoded in mode "pasta" (threads) or "sequential", by the engine's step loop.

    Life: the engine prefills the prompt and calls `begin` with the logits that draw main's first
    token; then, once a step, `schedule` (None when finished) and `update` with the drawn rows.
    `take_delta` gives the text that can no longer change since the last call; `result` the end."""

    def __init__(self, engine, prompt_ids: list[int], mode: str = "pasta", opts: Options | None = None,
                 source=None, record_logits: bool = False, cancel=None, deadline: float | None = None,
                 record_layout: bool = False):
        if mode not in ("pasta", "sequential"):
            raise ValueError(f"mode must be 'pasta' or 'sequential', not {mode!r}")
        self.e, self.opts, self.mode = engine, opts or Options(), mode
        self.prompt_ids = list(prompt_ids)
        self.source = source or Sampler(self.opts, engine.device)
        guarded = mode == "pasta" and self.opts.guard_tags and isinstance(self.source, Sampler)  # never a replay
        self.guard = engine.guard if guarded else None
        self.cancel_event, self.deadline, self._cancelled = cancel, deadline, False
        self.layout = ThreadLayout()
        self.main = Thread(MAIN, Detokenizer(engine.tokenizer))
        self.main.room_for_promise = self._room_for_promise
        # contexts are kept only for a penalty: off, the decoding loop does no bookkeeping for it (blocks copy
        # main's empty context)
        self.counting = self.opts.repetition_penalty != 1.0
        self.main.context = Context.of_prompt(self.prompt_ids, engine.unpenalized) if self.counting else Context()
        self.synced = 0  # blocks whose text main's context holds
        self.blocks: list[Thread] = []
        self.promises: list[tuple] = []  # main's items of the promises accepted (blocks forked or about to be)
        self.last_tag_tokens = 0  # main's tokens for the last promise tag (guarded decoding only)
        self.total = 0  # tokens drawn by all threads
        self.forced = 0  # forced <async> tokens
        self.steered = self.looped = self.steps = 0
        self.began = self.prefill_time = self.wall = 0.0
        self.finish = "stop"
        self.repairs: list[str] = []
        self.logits = [] if record_logits else None
        self.trace = LayoutRecorder(self.prompt_ids) if record_layout else None
        self._trace_rows: list[int] = []  # the trace's index of each token drawing this step
        self.sent = 0  # characters of the stitched answer handed out by take_delta
        self.done = False
        self._drawing: list[Thread] = []

    # -- the engine's interface ---------------------------------------------------------------
    def cancel(self) -> None:
        """Stops decoding at the next step (finish_reason "cancelled"); safe from any thread."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """Whether cancel() was called or the `cancel` event given at creation is set."""
        return self._cancelled or (self.cancel_event is not None and self.cancel_event.is_set())

    @property
    def started(self) -> bool:
        """Whether it has left the queue: prefilled, or ended before (abort)."""
        return self.steps > 0 or self.done

    def begin(self, row: torch.Tensor, began: float, prefill_time: float) -> None:
        """The prompt is in the cache (the engine placed `layout`, its prefill began at perf_counter `began`);
        main draws its first token from `row`."""
        self.began, self.prefill_time, self.steps = began, prefill_time, 1
        self._trace_rows = [len(self.prompt_ids) - 1]
        self._accept([self.main], row[None])

    def abort(self, why: str) -> None:
        """Ends a request that never started (cancelled or timed out while it waited)."""
        self.began = time.perf_counter()
        self._cut_everything(why)
        self._finish()

    def schedule(self) -> Feed | None:
        """This step's tokens, after cancellation, deadline and budget are enforced; None once finished."""
        if self.cancelled:
            self._cut_everything("cancelled")
        elif self.deadline is not None and time.perf_counter() > self.deadline:
            self._cut_everything("timeout")
        elif self.total >= self.opts.max_new_tokens:
            self._cut_everything("length")
        feed = self._assemble()
        if feed is None:
            self._finish()
        return feed

    def update(self, rows: torch.Tensor) -> None:
        """The logits rows of the tokens `schedule` marked as drawing, in its order."""
        self.steps += 1
        self._accept(self._drawing, rows)

    def take_delta(self) -> str:
        """The stitched answer's new text in reading order that no later step can change: a block's
        text once it ended, and not yet what may still be cut (a tag opener, a partial stop string)."""
        text = self._stitched(committed=not self.done, hold=0 if self.done else self._unsettled())
        if len(text) <= self.sent:
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta

    def result(self) -> Result:
        threads = [self.main, *self.blocks]
        return Result(
            text=self._stitched(committed=False), stored=self._stored(),
            mode=self.mode, finish_reason=self.finish, prompt_tokens=len(self.prompt_ids),
            tokens=self.total + self.forced, thread_tokens=[t.drawn for t in threads], steps=self.steps,
            threads=len(self.blocks), wall_time=self.wall, prefill_time=self.prefill_time, repairs=self.repairs,
            steered=self.steered, looped=self.looped, logits=self.logits,
            layout=self.trace.layout() if self.trace is not None else None)

    def snapshot(self) -> list[dict]:
        """Every thread's state and text so far (main's text without its blocks)."""
        return [{"thread": th.tid, "state": th.state, "text": th.text(), "tokens": th.drawn}
                for th in (self.main, *self.blocks)]

    def _finish(self) -> None:
        if not self.done:
            self.done, self.wall = True, time.perf_counter() - self.began

    # -- the next step's tokens -----------------------------------------------------------------
    def _assemble(self) -> Feed | None:
        """The tokens of the next step, in cache order, or None when every thread is finished."""
        ids, pos, vis, draw = [], [], [], []
        self._drawing, self._trace_rows = [], []

        def put(th: Thread, token: int, drawing: bool) -> None:
            _, p, v = self.layout.append(th.tid)
            ids.append(token)
            pos.append(p)
            vis.append(v)
            traced = self.trace.feed(token, th.tid) if self.trace is not None else None
            if drawing:
                draw.append(len(ids) - 1)
                self._drawing.append(th)
                self._trace_rows.append(traced)

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
            if self.trace is not None:
                self.trace.sync()
            for b in self.blocks[self.synced:]:
                main.context += b.context.own()
            self.synced = len(self.blocks)
            main.state, main.feed, main.held = RUNNING, [main.held], None
        if main.state == RUNNING and main.feed:
            put(main, main.feed[0], True)
            main.feed = []
            for tag in main.forks:
                reserved = min(tag.tokens, self.opts.max_promise_tokens)
                tid = self.layout.fork(reserved)
                if self.trace is not None:
                    self.trace.fork(reserved)
                block = Thread(tid, Detokenizer(self.e.tokenizer, self.e.async_ids))
                block.state, block.feed, block.promised = QUEUED, list(self.e.async_ids), tag.tokens
                block.context = main.context.fork()
                block.budget_short = self._budget_short
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
        return Feed(ids, pos, vis, draw) if ids else None

    # -- what the threads drew -----------------------------------------------------------------
    def _accept(self, threads: list[Thread], rows: torch.Tensor) -> None:
        if self.logits is not None:
            self.logits += [(th.tid, rows[i].float().clone()) for i, th in enumerate(threads)]
        for i, (th, token) in enumerate(zip(threads, self.source.draw(rows, threads))):
            if self.guard is not None:
                token, steered = self.guard.choose(rows[i], th, token, self.source)
                self.steered += steered
            if self.trace is not None:
                self.trace.drew(self._trace_rows[i], token)
            th.drawn += 1
            self.total += 1
            in_tag = self.counting and th.in_tag
            if th.tid == MAIN:
                self._main_drew(th, token)
            else:
                self._block_drew(th, token)
            if self.counting and not (in_tag or th.in_tag or token in self.e.unpenalized):  # text, not a tag
                th.context.append(token)

    def _main_drew(self, main: Thread, token: int) -> None:
        if token in self.e.end_ids:  # the end is an implicit sync: wait for the blocks, feed nothing
            self._end_main()
            return
        if main.sync_next:  # the token after a sync waits for the blocks
            main.sync_next = False
            main.state, main.held = WAITING, token
        else:
            main.feed = [token]
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
                if len(self.promises) >= self.opts.max_promises:
                    self._drop(main, f"main: dropped promise {ev.topic!r}: more than {self.opts.max_promises}")
                    continue
                main.forks.append(ev)
                main.items.append(("promise", ev, len(self.promises) + 1))
                self.promises.append(main.items[-1])
                if self.guard is not None:
                    self.last_tag_tokens = len(encode(self.e.tokenizer, ev.raw))
            elif ev.kind == SYNC:
                main.items.append(("sync", ev.raw))
                main.sync_next = True
            else:
                self._drop(main, f"main: dropped {ev.raw} (only an async thread writes it)")

    def _room_for_promise(self) -> bool:
        """Whether another promise may begin: fewer than `max_promises` so far, the budget not short, and holding one
        like the last: what no thread has drawn yet, less what the blocks still writing owe (a promise's tokens, less
        what its block drew), is at least its tag and its N (past that, max_new_tokens would cut its block)."""
        if len(self.promises) >= self.opts.max_promises or self._budget_short():
            return False
        if not self.promises:
            return True
        owed = 0
        for item in self.promises:
            block = self._block_of(item)
            if block is None or block.state in (RUNNING, QUEUED):
                owed += max(0, item[1].tokens - (block.drawn if block else 0))
        return self.opts.max_new_tokens - self.total - owed >= self.last_tag_tokens + self.promises[-1][1].tokens

    def _budget_short(self) -> bool:
        """Whether what no thread has drawn yet is under WRAP_TOKENS for each running block and main (asked for every
        token a guarded block draws: the running blocks are counted only near the budget's end)."""
        left = self.opts.max_new_tokens - self.total
        if left >= WRAP_TOKENS * (len(self.blocks) + 1):
            return False
        return left < WRAP_TOKENS * (sum(b.state == RUNNING for b in self.blocks) + 1)

    def _main_text(self, main: Thread, text: str) -> None:
        if not text:
            return
        main.items.append(("text", text))
        if self.opts.stop_loops and main.state != DONE and loops(main.tail(LOOP_TAIL)):
            self.finish, self.looped = "loop", self.looped + 1
            self._end_main()
            return
        if self.opts.stop:
            # a stop string now found ends in the new text (an older one would have stopped main already):
            # search the tail it can reach, not all of main's text on every token
            tail = main.tail(len(text) + max(map(len, self.opts.stop)) - 1)
            hits = [tail.find(s) for s in self.opts.stop if s in tail]
            if hits:
                cut = len(tail) - min(hits)
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
                if block.wrapped:
                    self._repair(f"block {block.tid}: ended at a sentence end, the answer's budget running short")
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
        the next text into a new tag, so it goes too (take_delta never hands it out before)."""
        self._repair(what)
        self._defuse(th)

    def _defuse(self, th: Thread) -> None:
        if self.mode == "pasta" and th.items and th.items[-1][0] == "text":  # sequential text holds no tags
            text = th.items[-1][1]
            lexer = Lexer()
            lexer.feed(text)
            if lexer.pending:  # what could still become a tag
                th.items[-1] = ("text", text[:len(text) - len(lexer.pending)])
                if not th.items[-1][1]:
                    th.items.pop()
                self._repair(f"thread {th.tid}: removed {lexer.pending[:40]!r}, a tag opener left dangling")

    # -- output ----------------------------------------------------------------------------------
    def _unsettled(self) -> int:
        """How many of main's last text characters a later step may still cut: a partial stop string,
        and before it (pasta mode) what could still become a tag."""
        tail = self.main.tail(SETTLE_TAIL)
        hold = max((k for s in self.opts.stop for k in range(1, len(s)) if tail.endswith(s[:k])), default=0)
        if self.mode == "pasta":
            lexer = Lexer()
            lexer.feed(tail[:len(tail) - hold])
            hold += len(lexer.pending)
        return hold

    def _stitched(self, committed: bool, hold: int = 0) -> str:
        """The answer in reading order; `committed`: only what can no longer change place, and not the
        last `hold` characters of main's text (nor a block promised within them)."""
        out = []
        budget = sum(len(i[1]) for i in self.main.items if i[0] == "text") - hold if hold else None
        for item in self.main.items:
            if item[0] == "text":
                if budget is not None:
                    out.append(item[1][:max(budget, 0)])
                    budget -= len(item[1])
                    if budget < 0:
                        break
                else:
                    out.append(item[1])
            elif item[0] == "promise":
                block = self._block_of(item)
                if block is not None:
                    out.append(block.text())
                if committed and (block is None or block.state != DONE):
                    break
        return "".join(out)

    def _stored(self) -> str:
        """The stored form: main's text and tags as drawn, each block after its promise (a cut one closed)."""
        parts = []
        for item in self.main.items:
            if item[0] == "text":
                parts.append(item[1])
            elif item[0] == "sync":
                parts.append(make_sync(item[1]))
            else:
                tag, block = item[1], self._block_of(item)
                parts.append(make_block(tag.topic, tag.tokens, block.text() if block is not None else "", tag.raw))
        return render(make_document(parts))

    def _block_of(self, item: tuple) -> Thread | None:
        """The block a promise item forked, None while it is not forked yet."""
        return self.blocks[item[2] - 1] if item[2] <= len(self.blocks) else None

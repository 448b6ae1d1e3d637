"""A deliberately naive interpreter that exists to prove the engine right.

No shared cache and no bitsets: every token records, as a Python set, exactly which tokens
it sees (read off PASTA-LANG.md), and each draw runs the model from scratch over the drawing
thread's whole visible context. Slow and obviously correct; the engine must agree with it.
Well-formed output only: no caps, no repairs.
"""

from __future__ import annotations

import torch

from .detok import Detokenizer
from .layout import encode
from .tags import ASYNC_CLOSE, OPEN_TAG, PROMISE, SYNC, Lexer, Tag


class _Thread:
    def __init__(self, tid: int, detok: Detokenizer):
        self.tid, self.detok, self.lexer = tid, detok, Lexer()
        self.drawn = 0  # what `Script.draw` reads
        self.tokens: list[int] = []  # uids of this thread's tokens
        self.pending: list[int] = []  # token ids to feed next
        self.next_pos = 0
        self.text: list = []  # stored text pieces; main also holds ("block", k) placeholders
        self.forks: list[int] = []  # N of each promise the pending token completes
        self.syncs = False  # the pending token completes a <sync/>
        self.hold = False  # main: the next token drawn waits for the blocks
        self.held: int | None = None
        self.closing = self.done = False
        self.promise_uid = -1
        self.synced: set[int] = set()


class ReferenceInterpreter:
    def __init__(self, model, tokenizer, end_ids: set[int]):
        self.model, self.tokenizer, self.end_ids = model, tokenizer, end_ids

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], source, max_steps: int = 1000):
        """Returns (stored text, [drawn tokens per thread], [(thread, logits row)] per draw)."""
        self.ids, self.pos, self.sees = [], [], []  # per token, in the order they were fed
        self.promised = 0
        main = _Thread(0, Detokenizer(self.tokenizer))
        threads = [main]
        for token in prompt_ids:
            self._add(main, token, set(main.tokens))
        log, drawing = [], [main]
        for _ in range(max_steps):
            if not drawing:
                break
            rows = torch.stack([self._logits(th.tokens[-1]) for th in drawing])
            log += [(th.tid, rows[i]) for i, th in enumerate(drawing)]
            for th, token in zip(drawing, source.draw(rows, drawing)):
                th.drawn += 1
                self._drew(th, token)
            drawing = self._feed(threads)
        stored = []
        for piece in main.text:
            stored += threads[piece[1]].text if isinstance(piece, tuple) else [piece]
        return "".join(stored), [th.drawn for th in threads], log

    def _drew(self, th: _Thread, token: int) -> None:
        if th.tid == 0 and token in self.end_ids:
            th.done = True
            return
        if th.hold:
            th.held, th.hold = token, False
        else:
            th.pending = [token]
        for ev in th.lexer.feed(th.detok.push(token)):
            if not isinstance(ev, Tag):
                th.text.append(ev.text)
                continue
            th.text.append(ev.raw)
            if ev.kind == ASYNC_CLOSE:
                th.closing = True
            elif ev.kind == PROMISE:
                th.forks.append(ev.tokens)
                self.promised += 1
                th.text.append(("block", self.promised))
            elif ev.kind == SYNC:
                th.syncs = True

    def _feed(self, threads: list[_Thread]) -> list[_Thread]:
        """Feeds every pending token; returns the threads that draw next."""
        main, drawing = threads[0], []
        for block in threads[1:]:
            if block.pending:
                self._feed_block(block)
                if block.closing:
                    block.done = True
                else:
                    drawing.append(block)
        if main.held is not None and all(b.done for b in threads[1:]):
            # sync: main now sees every block and moves past the furthest one
            main.synced = {uid for b in threads[1:] for uid in b.tokens}
            main.next_pos = max([main.next_pos] + [b.next_pos for b in threads[1:]])
            main.pending, main.held = [main.held], None
        if main.pending and not main.done:
            self._add(main, main.pending.pop(), set(main.tokens) | main.synced)
            drawing.append(main)
            main.hold, main.syncs = main.syncs, False
            for n in main.forks:
                block = _Thread(len(threads), Detokenizer(self.tokenizer, encode(self.tokenizer, OPEN_TAG)))
                block.promise_uid, block.next_pos = len(self.ids) - 1, self.pos[-1] + 1
                main.next_pos = self.pos[-1] + 1 + n
                block.pending, block.text = encode(self.tokenizer, OPEN_TAG), [OPEN_TAG]
                threads.append(block)
                self._feed_block(block)
                drawing.append(block)
            main.forks = []
        return drawing

    # -- tokens and what they see -----------------------------------------------------------------
    def _add(self, th: _Thread, token: int, sees: set[int]) -> None:
        uid = len(self.ids)
        self.ids.append(token)
        self.pos.append(th.next_pos)
        th.next_pos += 1
        self.sees.append(sees | {uid})
        th.tokens.append(uid)

    def _feed_block(self, block: _Thread) -> None:
        # a block sees what its promise's last token saw, and its own earlier tokens
        for token in block.pending:
            self._add(block, token, self.sees[block.promise_uid] | set(block.tokens))
        block.pending = []

    def _logits(self, uid: int) -> torch.Tensor:
        context = sorted(self.sees[uid])
        allowed = torch.tensor([[j in self.sees[i] for j in context] for i in context])
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        out = self.model(input_ids=torch.tensor([[self.ids[i] for i in context]]),
                         position_ids=torch.tensor([[self.pos[i] for i in context]]),
                         attention_mask=mask[None, None])
        return out.logits[0, -1].float()

"""The pattern baseline: parallel decoding of the numbered lists a plain model writes.

Before PASTA, parallel decoders split answers by rule. This one watches the sequential model's
answer as it streams. Once item 1 of a numbered list has ended and item 2 begun, it starts
speculative threads for the next items, each seeing the answer up to item 1 plus its own marker
("3.", "4.", ...). Main writes item 2; at the end of each item it draws the next few tokens
itself, and if they are the next item's marker it adopts that item's thread (waiting for it if
need be) instead of writing the item; anything else ends the list and drops unused threads.
Threads share one cache; positions and masks come from `ThreadLayout`.
"""

from __future__ import annotations

import re
import time

import torch

from interpreter import Engine, Options, encode
from interpreter.detok import Detokenizer
from interpreter.kv import forward, new_cache
from interpreter.layout import MAIN, ThreadLayout
from interpreter.repetition import loops
from interpreter.sampling import Context, Sampler

_LIST_START = re.compile(r"(?:^|\n)[ \t]*1([.)])[ \t][^\n]*?(\n+[ \t]*)2\1$")
SEEK, ITEM, CHECK, ADOPT, FREE = "seek", "item", "check", "adopt", "free"


class _Thread:
    in_tag = False  # the repetition penalty's question (interpreter.sampling.penalize): this text has no tags

    def __init__(self, tid: int, forced: list[int] | None, detok: Detokenizer, number: int = 0):
        self.tid, self.number, self.detok = tid, number, detok
        self.feed = list(forced or [])
        self.drawn, self.text, self.done = 0, "", False
        self.context = Context()  # what the repetition penalty counts (interpreter.sampling.penalize)


class PatternDecoder:
    name = "pattern"

    def __init__(self, engine: Engine, model: str, options: Options, ahead: int = 4, source=None):
        self.engine, self.model, self.options, self.ahead = engine, model, options, ahead
        self.source = source  # tests script the tokens; by default the model draws them

    @torch.inference_mode()
    def answer(self, instruction: str) -> dict:
        return _Run(self, self.engine.prompt_ids(instruction)).run()


class _Run:
    def __init__(self, dec: PatternDecoder, prompt: list[int]):
        self.e, self.opts, self.ahead, self.model = dec.engine, dec.options, dec.ahead, dec.model
        self.tok = self.e.tokenizer
        self.prompt = prompt
        self.layout, self.cache = ThreadLayout(), new_cache(self.e.model)
        self.sampler = dec.source or Sampler(self.opts, self.e.device)
        self.main = _Thread(MAIN, None, Detokenizer(self.tok))
        self.counting = self.opts.repetition_penalty != 1.0  # contexts are kept only for a penalty
        self.main.context = Context.of_prompt(prompt, self.e.unpenalized) if self.counting else Context()
        self.segments: list[list] = [["main", ""]]  # main text, with ["item", n] where a thread's item goes
        self.ends: list[tuple[int, int, int]] = []  # per main token fed: (answer offset after it, vis, position)
        self.items: dict[int, _Thread] = {}
        self.phase, self.current = SEEK, 0  # current: the item main writes or checks the end of
        self.sep = self.delim = ""
        self.item_len = 8  # tokens per item, estimated from item 1
        self.item_start = self.check_start = 0
        self.drawn = self.steps = 0
        self.done = self.looped = False

    def answer(self) -> str:
        return "".join(s[1] if s[0] == "main" else self.items[s[1]].text for s in self.segments)

    def run(self) -> dict:
        start = time.perf_counter()
        for _ in self.prompt:
            self.layout.append(MAIN)
        rows = forward(self.e.model, self.cache, self.layout.slots, self.prompt, list(range(len(self.prompt))),
                       None, [len(self.prompt) - 1])
        self.steps = 1
        self.main.feed = self._main_drew(self._draw(rows, [self.main])[0])
        while self.drawn < self.opts.max_new_tokens:
            if self.phase == ADOPT and self.items[self.current + 1].done:
                self._adopt()
            ids, pos, vis, keep, who = [], [], [], [], []
            for th in [*self.items.values(), self.main]:
                if th.feed and not th.done:
                    for t in th.feed:
                        _, p, v = self.layout.append(th.tid)
                        ids.append(t)
                        pos.append(p)
                        vis.append(v)
                        if th is self.main:
                            self.ends.append((len(self.answer()), v, p))
                    th.feed = []
                    keep.append(len(ids) - 1)
                    who.append(th)
            if not ids:
                break
            rows = forward(self.e.model, self.cache, self.layout.slots, ids, pos, vis, keep)
            self.steps += 1
            for th, t in zip(who, self._draw(rows, who)):
                if th is self.main:
                    th.feed = self._main_drew(t)
                else:
                    self._item_drew(th, t)
        text = self.answer()
        wall = time.perf_counter() - start
        seq = len(encode(self.tok, text))
        return {"method": "pattern", "model": self.model, "text": text, "stored": text, "tokens": self.drawn,
                "steps": self.steps, "threads": len(self.items), "wall_time": wall,
                "theoretical_speedup": seq / self.steps, "parallelism": self.drawn / self.steps,
                "finish_reason": "loop" if self.looped else "stop" if self.done else "length", "repairs": []}

    def _draw(self, rows, who) -> list[int]:
        self.drawn += len(who)
        tokens = self.sampler.draw(rows, who)
        for th, t in zip(who, tokens):
            if self.counting and t not in self.e.unpenalized:
                th.context.append(t)
        return tokens

    # -- main ---------------------------------------------------------------------------------------
    def _main_drew(self, token: int) -> list[int]:
        """Takes main's token; returns what main feeds next (nothing while it waits or when done)."""
        self.main.drawn += 1
        if token in self.e.end_ids:
            self.done = True
            self._drop_items()
            return []
        self.segments[-1][1] += self.main.detok.push(token)
        text = self.answer()
        if self.opts.stop_loops and loops(text):  # Options.stop_loops, as the engine's methods do
            self.done, self.looped = True, True
            self._drop_items()
            return []
        if self.phase == SEEK:
            m = _LIST_START.search(text)
            if m:
                self._start_list(m)
        elif self.phase == ITEM and "\n" in text[self.item_start:]:
            self.phase, self.check_start = CHECK, self.item_start + text[self.item_start:].index("\n")
        if self.phase == CHECK:
            tail, expected = text[self.check_start:], self.sep + f"{self.current + 1}{self.delim}"
            if tail.startswith(expected):
                if self.current + 1 in self.items:  # the model goes on with the list: adopt the thread's item
                    extra = len(tail) - len(expected)  # main's own words after the marker give way to the item's
                    if extra:
                        self.segments[-1][1] = self.segments[-1][1][:-extra]
                    self.phase = ADOPT
                    return []
                self.phase, self.current, self.item_start = ITEM, self.current + 1, len(text)
            elif not expected.startswith(tail):
                self.phase = FREE  # anything but the next marker: the list is over
                self._drop_items()
        return [token]

    def _start_list(self, m: re.Match) -> None:
        item1_end = m.start(2)
        inside = [i for i, (end, _, _) in enumerate(self.ends) if end <= item1_end]
        first = next((i for i, (end, _, _) in enumerate(self.ends) if end > m.start(0)), 0)
        if not inside:
            return
        self.delim, self.sep = m.group(1), m.group(2)
        self.item_len = max(4, inside[-1] - first + 1)
        self.phase, self.current, self.item_start = ITEM, 2, len(self.answer())
        _, vis, pos = self.ends[inside[-1]]
        for n in range(3, 3 + self.ahead):  # each sees the answer through item 1, placed where its item should be
            self._fork(n, vis, pos + 1 + (n - 2) * self.item_len)

    def _adopt(self) -> None:
        n = self.current + 1
        self.layout.merge(self.items[n].tid)
        self.main.context += self.items[n].context.own()
        self.segments += [["item", n], ["main", ""]]
        self.current = n
        if n + self.ahead - 1 not in self.items:
            self._fork(n + self.ahead - 1, self.layout.vis[MAIN],
                       self.layout.next_pos[MAIN] + (self.ahead - 2) * self.item_len)
        # main writes the separator after the adopted item itself, now seeing the item
        bridge = encode(self.tok, self.sep)[:1]
        self.phase, self.check_start = CHECK, len(self.answer())
        self.segments[-1][1] += self.main.detok.push(bridge[0])
        self.main.feed = bridge

    def _fork(self, n: int, vis: int, position: int) -> None:
        forced = encode(self.tok, self.sep + f"{n}{self.delim}")
        self.items[n] = _Thread(self.layout.branch(vis, position), forced, Detokenizer(self.tok, forced), n)
        # main's context has its item 2 marker too: a few tokens more than the thread sees
        self.items[n].context = self.main.context.fork(forced)

    def _drop_items(self) -> None:
        adopted = {s[1] for s in self.segments if s[0] == "item"}
        for n in [n for n in self.items if n not in adopted]:
            del self.items[n]

    # -- item threads --------------------------------------------------------------------------------
    def _item_drew(self, th: _Thread, token: int) -> None:
        th.drawn += 1
        if token not in self.e.end_ids:
            th.text += th.detok.push(token)
        if "\n" in th.text or token in self.e.end_ids or th.drawn >= self.opts.max_thread_tokens:
            th.text, th.done = th.text.split("\n", 1)[0], True
        else:
            th.feed = [token]

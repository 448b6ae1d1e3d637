"""Cost measures of a stored sequence under a tokenizer (PASTA-LANG.md, "Cost measures").

Steps follow the engine's schedule: each step is one forward pass after which every running
thread emits one token. A block's forced `<async>` enters with its promise's last token
(no extra step); after `<sync/>` main has already drawn its next token, which must wait
until every synced block has emitted its last token before it can be fed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .layout import MAIN, encode, pieces
from .parser import Document, parse


@dataclass(frozen=True)
class Costs:
    sequential_tokens: int
    parallel_steps: int
    total_tokens: int  # every stored token, tags and forced openings included

    @property
    def theoretical_speedup(self) -> float:
        return self.sequential_tokens / self.parallel_steps if self.parallel_steps else 1.0

    @property
    def parallelism(self) -> float:
        return self.total_tokens / self.parallel_steps if self.parallel_steps else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "theoretical_speedup": round(self.theoretical_speedup, 4),
                "parallelism": round(self.parallelism, 4)}


def measure(stored: str | Document, tokenizer) -> Costs:
    doc = parse(stored) if isinstance(stored, str) else stored
    total = 0
    last_emit = 0  # step at which main emitted its latest token
    next_main = 1  # step at which main emits its next token
    block_start: dict[int, int] = {}
    block_last: dict[int, int] = {}
    barrier = None  # after a sync: earliest step for the token after main's held token
    unsynced: list[int] = []
    latest = 0
    for piece in pieces(doc):
        n = len(encode(tokenizer, piece.text))
        total += n
        if piece.thread == MAIN:
            for _ in range(n):
                last_emit = next_main
                next_main = last_emit + 1
                if barrier is not None:  # this is the held token after a sync
                    next_main, barrier = max(next_main, barrier), None
            latest = max(latest, last_emit)
            if piece.kind == "promise":
                unsynced.append(piece_block := len(block_start) + 1)
                block_start[piece_block] = block_last[piece_block] = last_emit
            elif piece.kind == "sync":
                barrier = max((block_last[b] + 1 for b in unsynced), default=None)
                unsynced = []
        elif piece.kind != "open":  # forced openings cost nothing
            block_last[piece.thread] += n
            latest = max(latest, block_last[piece.thread])
    sequential = len(encode(tokenizer, doc.stripped))
    return Costs(sequential, latest, total)


def block_lengths(stored: str | Document, tokenizer) -> list[int]:
    """Tokens of each block, `<async>` and `</async>` included, tokenized piece by piece as training does:
    what a promise's `tokens` estimates."""
    doc = parse(stored) if isinstance(stored, str) else stored
    lengths: list[int] = []
    for piece in pieces(doc):
        if piece.thread != MAIN:
            if piece.kind == "open":
                lengths.append(0)
            lengths[-1] += len(encode(tokenizer, piece.text))
    return lengths

"""Degenerate repetition of decoded text: small models loop, and a loop must not pass for an answer.

The dataset filters reject answers that repeat themselves; best-of-N scoring treats such samples as broken
(a likelihood-based judge rates loops well, and long looping blocks look fast)."""

from __future__ import annotations

import re

LOOPING = 0.35  # a share of repeated 4-grams above this is a loop (datasets, best-of-N samples, held-out checks)
LOOP_WINDOW = 48  # words: the tail of a thread being decoded that `loops` looks at
WORD_CHARS = 24  # longer than a word: a run without spaces, read as pieces of 4 characters
LOOP_TAIL = LOOP_WINDOW * WORD_CHARS  # characters: enough to hold LOOP_WINDOW words


def repetition(text: str) -> float:
    """Share of word 4-grams (numbers masked) that repeat an earlier one; 0 for texts under 19 words."""
    words = re.sub(r"\d+", "#", text).split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if len(grams) >= 16 else 0.0


def _pieces(word: str) -> list[str]:
    return [word] if len(word) <= WORD_CHARS else [word[i:i + 4] for i in range(0, len(word), 4)]


def loops(text: str) -> bool:
    """Whether a text being decoded has fallen into a loop: its last LOOP_WINDOW words repeat their
    4-grams above LOOPING (about two rounds of a repeated sentence). Shorter texts never loop. A run without
    spaces longer than any word counts as a word per 4 characters, so that `1111…` or `10:15:16:27:…` loops too."""
    words = [piece for w in text[-LOOP_TAIL:].split() for piece in _pieces(w)][-LOOP_WINDOW:]
    return len(words) == LOOP_WINDOW and repetition(" ".join(words)) > LOOPING


def _grams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.sub(r"\d+", "#", text.lower()).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def cross_block_repetition(blocks: list[str]) -> float | None:
    """Share of the blocks' word 3-grams (numbers masked) that also stand in another block of the same answer:
    blocks decoded in parallel never see each other, so they may say the same thing twice. None with fewer than
    two blocks."""
    grams = [_grams(b) for b in blocks]
    if len(grams) < 2:
        return None
    total = sum(len(g) for g in grams)
    shared = sum(len(g & set().union(*(o for j, o in enumerate(grams) if j != i))) for i, g in enumerate(grams))
    return shared / total if total else 0.0

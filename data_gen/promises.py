"""Promise lengths: each promise's `tokens` rewritten to its block's true length under the student's tokenizer."""

from __future__ import annotations

from interpreter import Document, block_lengths, parse, promise_tag
from interpreter.parser import Block, MainText, Sync


def round_up(n: int, granularity: int) -> int:
    return -(-n // granularity) * granularity


def render(doc: Document, tokens: list[int]) -> str:
    """The canonical stored form of `doc` with the given promise lengths (tags spelled one way only)."""
    out: list[str] = []
    lengths = iter(tokens)
    for seg in doc.segments:
        if isinstance(seg, MainText):
            out.append(seg.text)
        elif isinstance(seg, Sync):
            out.append("<sync/>")
        elif isinstance(seg, Block):
            out += [promise_tag(seg.promise.topic, next(lengths)), "<async>", seg.text, "</async>"]
    return "".join(out)


def rewrite_tokens(stored: str | Document, tokenizer, granularity: int = 10) -> tuple[str, bool]:
    """(stored form with true, rounded-up lengths; whether any promise's `tokens` changed)."""
    doc = parse(stored) if isinstance(stored, str) else stored
    true = [round_up(n, granularity) for n in block_lengths(doc, tokenizer)]
    return render(doc, true), [p.tokens for p in doc.promises] != true

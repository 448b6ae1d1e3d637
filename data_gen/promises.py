"""Promise lengths: each promise's `tokens` rewritten to its block's true length under the student's tokenizer."""

from __future__ import annotations

from interpreter import MAIN, Document, encode, parse, pieces, promise_tag
from interpreter.parser import Block, MainText, Sync


def block_lengths(doc: Document, tokenizer) -> list[int]:
    """Tokens of each block, `<async>` and `</async>` included, tokenized piece by piece as training does."""
    lengths: list[int] = []
    for piece in pieces(doc):
        if piece.thread != MAIN:
            if piece.kind == "open":
                lengths.append(0)
            lengths[-1] += len(encode(tokenizer, piece.text))
    return lengths


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

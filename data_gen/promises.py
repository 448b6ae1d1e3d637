"""Promise lengths and costs: each promise's `tokens` rewritten to its block's true length under the student's
tokenizer, and the costs of the result."""

from __future__ import annotations

from dataclasses import dataclass

from interpreter import Costs, Document, block_lengths, make_block, make_document, make_sync, measure
from interpreter.parser import Block, Sync


@dataclass(frozen=True)
class Measured:
    """A stored form whose promises hold their blocks' true lengths, and its costs, under the student's tokenizer."""

    doc: Document
    costs: Costs


def round_up(n: int, granularity: int) -> int:
    return -(-n // granularity) * granularity


def rewrite_tokens(doc: Document, tokenizer, granularity: int = 10) -> tuple[Document, bool]:
    """(`doc` with true, rounded-up promise lengths and every tag spelled canonically; whether any promise's
    `tokens` changed)."""
    true = [round_up(n, granularity) for n in block_lengths(doc, tokenizer)]
    lengths, parts = iter(true), []
    for seg in doc.segments:
        if isinstance(seg, Block):
            parts.append(make_block(seg.promise.topic, next(lengths), seg.text))
        else:
            parts.append(make_sync() if isinstance(seg, Sync) else seg)
    return make_document(parts), [p.tokens for p in doc.promises] != true


def measured(doc: Document, tokenizer, granularity: int = 10) -> tuple[Measured, bool]:
    """(`doc` with true promise lengths and its costs; whether any promise's `tokens` changed)."""
    rewritten, changed = rewrite_tokens(doc, tokenizer, granularity)
    return Measured(rewritten, measure(rewritten, tokenizer)), changed

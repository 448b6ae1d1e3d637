"""Incremental detokenization: text of a growing token list, one token at a time.

Decoding token by token breaks characters that span tokens (byte-level BPE) and drops
word-initial spaces (SentencePiece); decoding a short window of context and keeping the
difference does neither. Text is released only once it no longer ends in a partial character.
"""

from __future__ import annotations


class Detokenizer:
    def __init__(self, tokenizer, context: list[int] | None = None):
        self.tokenizer = tokenizer
        self.ids = list(context or [])
        self.prefix = 0  # start of the decoding window
        self.read = len(self.ids)  # tokens whose text has been released

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Adds a token; returns the text it completes (possibly empty)."""
        text = self.peek(token)
        self.ids.append(token)
        if text:
            self.prefix, self.read = self.read, len(self.ids)
        return text

    def peek(self, token: int) -> str:
        """The text `push(token)` would return, without taking the token."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:] + [token])
        return after[len(before):] if len(after) > len(before) and not after.endswith("\ufffd") else ""

    def flush(self) -> str:
        """Whatever is still held at the end (a dangling partial character decodes as \ufffd)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]

"""Tag-guided decoding: keeps what a model draws inside Pasta-Lang, so the engine need not repair it.

A small model writes tags that break the language now and then (`</promise ...>`, a ninth topic
word, a promise inside a block, a block that ends the answer). The guard checks each drawn token
against the thread's lexer (`tags.may_take`: main writes promises and syncs, a block only its
`</async>`); a token that would write an invalid tag is masked and the draw repeated, so the
answer keeps the model's own choices wherever they were valid. Text with no tag in reach (no `<`
pending or drawn) takes a fast path. Replays of stored sequences are never guarded.

A model that has learned to open a promise but not yet to close it writes its topic on and on (`<promise
topic="1. **1. **...`): the guard holds a topic to `topic_words` words and a length to `tokens_digits`
digits, and a token that would break an open promise tag is replaced by the likeliest token that writes
the tag's next fixed piece (`" tokens="`, a digit, `"/>`), so a tag once opened is finished, not dropped
(redrawing there lengthened the last word instead: `book` became `bookshelves-and`). Elsewhere, when the
redraws find no valid token, the same closing pieces are the last resort.

With the tag pieces as added tokens, a promise's inner pieces (`" tokens="`, a length's close `" tokens="40"/>`,
and `"/>` where the tokenizer did not hold it already) are tokens a student has only seen inside a promise tag;
drawn anywhere else they are text to the language but a leak to the reader (`3. Research" tokens="30"/>` in a
block), so the guard takes them only inside an open promise.

Main begins a promise only while the answer's budget has room for one like its last (`Thread.room_for_promise`,
which the request provides): a student that sees its list as topics only promised more items than
`max_new_tokens` holds, and the last blocks were cut.

Main writes a sync only while a block is unsynced: one with nothing to wait for is valid but a step on the critical
path, and a half-trained student wrote `<sync/>` 310 times at the end of an answer until the budget ran out.

A block keeps its promise: once it has drawn `overrun` times the promised tokens, it ends at its next line break
or sentence end (the guard writes `</async>` there). Blocks that run that far past their promise loop or wander
(`2. Carry a "70"/> 3. Carry a "80"/>` on and on), and they spend the budget the later blocks and main's close need.

A budget cut lands in the middle of a parallel answer, not at its end: `max_new_tokens` stops every running block
mid-sentence, and the reader finds broken sentences between whole ones. Once the budget runs short
(`Thread.budget_short`, the request's rule: about a sentence left for each running block and main), main begins no
promise and the blocks end at their next line break or sentence end the same way; such a block is counted as a
repair, since the budget, not the model, ended it.
"""

from __future__ import annotations

import re

import torch

from .layout import MAIN, encode
from .tag_tokens import LENGTH_PIECES
from .tags import BLOCK_TAGS, CLOSE_TAG, MAIN_TAGS, SYNC, may_take

TOPIC_WORDS = 4  # a list number and three words: each is a step on main's critical path (the teacher writes up to 6)
TOKENS_DIGITS = 3  # under 1000: main's position jumps by `tokens`, and a student's `7000`s ran past the model's 8192
INNER_PIECES = ('" tokens="', '"/>', *LENGTH_PIECES)  # what a promise tag holds after its topic
NO_PROMISE = (SYNC,)  # main's tags once the budget has no room for another promise
OVERRUN = 1.5  # a block past this many times its promised tokens ends at its next line break or sentence end
SENTENCE_END = re.compile(r'(\n|[^\W\d_][.!?]["\')]?)$')  # `3.` is a list number, not a sentence's end
# ' tokens="' and "/>" too: a topic or a length closed by a plain `"` (`Arrive="`, `tokens="3"`) needs the rest of its
# piece when `" tokens="` or `"/>` is one token
CLOSING_PIECES = (*INNER_PIECES, ' tokens="', "/>", "</async>", "<sync/>", *"0123456789")


class TagGuard:
    def __init__(self, tokenizer, end_ids: set[int], tries: int = 64, topic_words: int = TOPIC_WORDS,
                 tokens_digits: int = TOKENS_DIGITS, overrun: float = OVERRUN):
        self.tokenizer = tokenizer
        self.end_ids = end_ids
        self.tries = tries  # masked redraws before the guard turns to the closing pieces
        self.topic_words = topic_words
        self.tokens_digits = tokens_digits
        self.overrun = overrun
        close = encode(tokenizer, CLOSE_TAG)  # one token with the tag pieces added; `</`, `async`, `>` as text
        self.close_after = {tokenizer.decode(close[:k]): t for k, t in enumerate(close)}  # what is pending -> next
        added = tokenizer.get_added_vocab()
        self.inner = {added[p] for p in INNER_PIECES if p in added}  # only with the tag pieces as added tokens
        lengths = {added[p] for p in LENGTH_PIECES if p in added}  # a length's close ends a promise in one token
        self.closers = torch.tensor(sorted({t for p in CLOSING_PIECES for t in encode(tokenizer, p)} | lengths))
        self.quoted = {t for t in self.closers.tolist() if tokenizer.decode([t]).lstrip().startswith(('"', "<"))}
        self._has_lt: dict[int, bool] = {}

    def _may_open_tag(self, token: int) -> bool:
        if token not in self._has_lt:
            self._has_lt[token] = "<" in self.tokenizer.decode([token], skip_special_tokens=False)
        return self._has_lt[token]

    @staticmethod
    def _kinds(thread) -> tuple[str, ...]:
        """The tags `thread` may write: a promise once begun is finished, a new one only while the budget has
        room; a sync only while a block is unsynced (asked only here, off the fast path)."""
        if thread.tid != MAIN:
            return BLOCK_TAGS
        kinds = MAIN_TAGS if thread.lexer.pending.startswith("<promise") or thread.room_for_promise() else NO_PROMISE
        return kinds if thread.promised_since_sync() else tuple(k for k in kinds if k != SYNC)

    def allows(self, thread, token: int) -> bool:
        pending = thread.lexer.pending
        if token in self.inner and not pending.startswith("<promise"):
            return False
        if token in self.end_ids:  # main may end unless a tag is half written; a block ends with </async>
            return thread.tid == MAIN and may_take(pending, "", self._kinds(thread), end=True)
        if not pending and not self._may_open_tag(token):
            return True
        return may_take(pending, thread.detok.peek(token), self._kinds(thread), topic_words=self.topic_words,
                        tokens_digits=self.tokens_digits)

    def choose(self, row: torch.Tensor, thread, token: int, sampler) -> tuple[int, bool]:
        """`</async>` for a block past its promise at a line break or sentence end (`_overdue`); else the drawn
        token if valid; inside an open promise tag, else the likeliest valid closing piece; elsewhere the first
        redraw by the sampler's own rule (greedy: the next best) that keeps the thread valid, the closing pieces
        only if none does. Also whether the guard steered."""
        if (close := self._overdue(thread)) is not None:
            if close != token and thread.drawn < self.overrun * thread.promised:
                thread.wrapped = True  # the budget ends it, not its promise: the request counts it as a repair
            return close, close != token
        if self.allows(thread, token):
            return token, False
        row = row.float().clone()
        if not thread.lexer.pending.startswith("<promise"):  # inside one, the model's next best runs on
            for _ in range(self.tries):
                row[token] = float("-inf")
                token = sampler.draw(row[None], [thread])[0]
                if self.allows(thread, token):
                    return token, True
        return self._closing_piece(row, thread, token), True

    def _overdue(self, thread) -> int | None:
        """For a block that has drawn `overrun` times its promise, or whose answer's budget runs short: the first
        token of `</async>` once a line or a sentence of its text has ended, the next one while it is being written;
        else None. A block once ended for the budget stays so (a block ending frees room)."""
        if thread.tid == MAIN or not (thread.wrapped or thread.drawn >= self.overrun * thread.promised
                                      or thread.budget_short()):
            return None
        pending = thread.lexer.pending
        if not pending and not (SENTENCE_END.search(thread.tail(3)) and thread.text().strip()):
            return None
        return self.close_after.get(pending)

    def _closing_piece(self, row: torch.Tensor, thread, token: int) -> int:
        """The likeliest token that closes what is open (a quote first: a topic's end rather than a longer
        word); else a digit; else `token`, left to the repairs."""
        closers = self.closers.to(row.device)
        valid = [int(closers[i]) for i in row[closers].argsort(descending=True).tolist()
                 if self.allows(thread, int(closers[i]))]
        quoted = [t for t in valid if t in self.quoted]
        return (quoted or valid or [token])[0]

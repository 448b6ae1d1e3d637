"""Tag-guided decoding: keeps what a model draws inside Pasta-Lang, so the engine need not repair it.

A small model writes tags that break the language now and then (`</promise ...>`, a ninth topic
word, a promise inside a block, a block that ends the answer). The guard checks each drawn token
against the thread's lexer (`tags.may_take`: main writes promises and syncs, a block only its
`</async>`); a token that would write an invalid tag is masked and the draw repeated, so the
answer keeps the model's own choices wherever they were valid. Text with no tag in reach (no `<`
pending or drawn) takes a fast path. Replays of stored sequences are never guarded.
"""

from __future__ import annotations

import torch

from .layout import MAIN
from .tags import BLOCK_TAGS, MAIN_TAGS, may_take


class TagGuard:
    def __init__(self, tokenizer, end_ids: set[int], tries: int = 64):
        self.tokenizer = tokenizer
        self.end_ids = end_ids
        self.tries = tries  # masked redraws before the guard gives up and leaves it to the repairs
        self._has_lt: dict[int, bool] = {}

    def _may_open_tag(self, token: int) -> bool:
        if token not in self._has_lt:
            self._has_lt[token] = "<" in self.tokenizer.decode([token], skip_special_tokens=False)
        return self._has_lt[token]

    def allows(self, thread, token: int) -> bool:
        kinds = MAIN_TAGS if thread.tid == MAIN else BLOCK_TAGS
        pending = thread.lexer.pending
        if token in self.end_ids:  # main may end unless a tag is half written; a block ends with </async>
            return thread.tid == MAIN and may_take(pending, "", kinds, end=True)
        if not pending and not self._may_open_tag(token):
            return True
        return may_take(pending, thread.detok.peek(token), kinds)

    def choose(self, row: torch.Tensor, thread, token: int, sampler) -> tuple[int, bool]:
        """The drawn token, or the first redraw by the sampler's own rule (greedy: the next best) that
        keeps the thread valid; also whether the guard steered."""
        if self.allows(thread, token):
            return token, False
        row = row.float().clone()
        for _ in range(self.tries):
            row[token] = float("-inf")
            token = sampler.draw(row[None], [thread])[0]
            if self.allows(thread, token):
                break
        return token, True

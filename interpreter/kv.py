"""Model I/O: forward passes over one KV cache, a row per request.

`KVBatch` keeps the cache of every request decoding together, one batch row each, so a query
attends over its own request's keys only (one shared row for all would make every query attend
over everyone's keys: measured 2x slower at 16 requests on the embedded model, docs/interpreter.md).
Rows are right-aligned: all are `width` slots long; a request that joins shorter is padded in
front, one that joins longer pads the others. A step appends as many slots to every row as the
busiest row feeds tokens; the rest pad. Padding is a slot nobody sees. A row that leaves is
dropped, and front columns that every remaining row pads are cut after the next step, so memory follows the live
requests. Slots are the bits of each request's `ThreadLayout`, which shifts with its row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import ThreadLayout, bits_to_rows, turn_end_id

PAD_ID = 0  # any valid id: a padding token's key and logits are never used


def end_token_ids(model, tokenizer) -> set[int]:
    ids = {turn_end_id(tokenizer)}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, list) else [value])
    return ids


def new_cache(model):
    from transformers import DynamicCache  # lazily: importing interpreter stays light (CLI, remote client)

    return DynamicCache(config=model.config)


def forward(model, cache, slots: int, ids: list[int], pos: list[int], vis: list[int] | None,
            keep: list[int]) -> torch.Tensor:
    """One step of a batch of one: `ids` enter the cache at positions `pos`, token i seeing the slots in
    bitset vis[i] (`slots` = cache length after the step; None: causal); the logits rows of `keep`."""
    return forward_rows(model, cache, slots, [ids], [pos], [vis] if vis is not None else None, keep)[0]


def forward_rows(model, cache, slots: int, ids: list[list[int]], pos: list[list[int]],
                 vis: list[list[int]] | None, keep: list[int]) -> torch.Tensor:
    """One step of equally long rows; returns logits [rows, len(keep), vocab] of the columns in `keep`."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    mask = None  # none when every new token sees the whole cache (prefill, sequential, main alone)
    full = (1 << slots) - 1
    if vis is not None and any(v != full for row in vis for v in row):
        allowed = torch.from_numpy(bits_to_rows([v for row in vis for v in row], slots)).to(device)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        mask = mask.view(len(ids), 1, len(ids[0]), slots)
    out = model(input_ids=torch.tensor(ids, device=device), position_ids=torch.tensor(pos, device=device),
                attention_mask=mask, cache=cache, use_cache=True,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device))
    return out.logits


@dataclass
class Feed:
    """A request's tokens for one step: ids at positions `pos`, token i seeing the slots in bitset vis[i]
    (the slots its layout handed out), and which of them draw (indices into ids)."""

    ids: list[int]
    pos: list[int]
    vis: list[int]
    draw: list[int]


class KVBatch:
    """The KV cache of the requests decoding together, a row per request (see the module doc)."""

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.width = 0  # slots per row
        self.layouts: list[ThreadLayout] = []  # row b's layout

    def __len__(self) -> int:
        return len(self.layouts)

    def prefill(self, ids: list[int], layouts: list[ThreadLayout]) -> torch.Tensor:
        """A prompt enters new rows, one per layout (answers to one prompt share its prefill); returns
        the logits row that draws each answer's first token. The layouts are fresh: this places them."""
        cache = new_cache(self.model)
        row = forward(self.model, cache, len(ids), ids, list(range(len(ids))), None, [len(ids) - 1])
        for lay in layouts:
            lay.counter.skip_to(len(ids))
            lay.see_prompt(len(ids))
        self._join(cache, layouts)
        return row[0]

    def _join(self, cache, layouts: list[ThreadLayout]) -> None:
        n = cache.layers[0].keys.shape[-2]
        if self.cache is None:
            self.width = n
        elif n < self.width:
            _pad_front(cache, self.width - n)
            for lay in layouts:
                lay.shift(self.width - n)
        elif n > self.width:
            _pad_front(self.cache, n - self.width)
            for lay in self.layouts:
                lay.shift(n - self.width)
            self.width = n
        if len(layouts) > 1:
            cache.batch_repeat_interleave(len(layouts))
        if self.cache is None:
            self.cache = cache
        else:
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([mine.keys, theirs.keys])
                mine.values = torch.cat([mine.values, theirs.values])
        self.layouts += layouts

    def drop(self, layouts: list[ThreadLayout]) -> None:
        """Frees the rows of these layouts (the front columns only padding holds go after the next step)."""
        keep = [b for b, lay in enumerate(self.layouts) if all(lay is not gone for gone in layouts)]
        if len(keep) == len(self.layouts):
            return
        self.layouts = [self.layouts[b] for b in keep]
        if not keep:
            self.cache, self.width = None, 0
            return
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)

    def _trim(self) -> None:
        """Cuts the front columns that every row pads (a longer request left), shifting every layout."""
        cut = min(lay.first_slot for lay in self.layouts)
        if cut > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., cut:, :], layer.values[..., cut:, :]
            for lay in self.layouts:
                lay.shift(-cut)
            self.width -= cut

    def step(self, feeds: list[Feed]) -> list[torch.Tensor]:
        """ONE forward pass over every row's feed (row order); returns each row's logits rows for its draws.
        Each feed's slots were taken from its layout's counter: row-local slots width, width + 1, ..."""
        t = max(len(f.ids) for f in feeds)
        slots = self.width + t
        ids, pos, vis = [], [], []
        for f in feeds:
            pad = range(self.width + len(f.ids), slots)
            ids.append(f.ids + [PAD_ID] * len(pad))
            pos.append(f.pos + [0] * len(pad))
            vis.append(f.vis + [1 << s for s in pad])  # a padding token sees itself alone: no empty softmax
        keep = sorted({j for f in feeds for j in f.draw})
        logits = forward_rows(self.model, self.cache, slots, ids, pos, vis, keep)
        column = {j: k for k, j in enumerate(keep)}
        self.width = slots
        for lay in self.layouts:
            lay.counter.skip_to(slots)
        self._trim()
        return [logits[b, [column[j] for j in f.draw]] for b, f in enumerate(feeds)]


def _pad_front(cache, n: int) -> None:
    def padded(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros((*x.shape[:-2], n, x.shape[-1])), x], dim=-2)

    for layer in cache.layers:
        layer.keys, layer.values = padded(layer.keys), padded(layer.values)

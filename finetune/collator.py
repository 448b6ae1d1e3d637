"""The training batch: every example laid out by `interpreter.build_layout`, the code the engine decodes with.

Each example becomes its token ids, position ids, an L×L additive visibility mask and its
per-thread targets. Batches are right-padded; a padding token sees only itself (no row is
fully masked, so no NaN) and no real token sees it, so padding changes no real token's logits.
Targets are already "shifted" (input i predicts `targets[i]`, the next token of its own
thread), so they go to the model as `shift_labels`, which causal-LM losses and TRL's fused
LM head use as they are.
"""

from __future__ import annotations

import torch

from interpreter import IGNORE, Layout, build_layout, prompt_ids, turn_end_id


class PastaCollator:
    """Turns dataset rows (`messages` + the answer in `text_field`) into a batch the model trains on."""

    def __init__(self, tokenizer, text_field: str = "annotated", max_length: int | None = None,
                 dtype: torch.dtype = torch.float32, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.text_field = text_field
        self.max_length = max_length
        self.dtype = dtype
        self.pad_to_multiple_of = pad_to_multiple_of
        self.end_id = turn_end_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    def layout(self, example: dict) -> Layout:
        """The prompt as the engine feeds it, the answer, and the token that ends the turn; or, for an answer
        the engine drew (`layout`: Result.layout.to_dict()), exactly what it fed and drew."""
        if example.get("layout") is not None:
            return Layout.from_dict(example["layout"])
        return build_layout(example[self.text_field], self.tokenizer, prompt_ids(self.tokenizer, example["messages"]),
                            self.end_id)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        layouts = [self.layout(e) for e in examples]
        lengths = [min(len(lay), self.max_length or len(lay)) for lay in layouts]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(layouts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        targets = torch.full((batch, width), IGNORE, dtype=torch.long)
        mask = torch.full((batch, 1, width, width), torch.finfo(self.dtype).min, dtype=self.dtype)
        for b, (lay, n) in enumerate(zip(layouts, lengths)):
            # a truncated example keeps its first n rows: causal, so they are exactly what they were
            input_ids[b, :n] = torch.tensor(lay.input_ids[:n])
            position_ids[b, :n] = torch.tensor(lay.position_ids[:n])
            targets[b, :n] = torch.tensor(lay.targets[:n])
            mask[b, 0, :n, :n] = lay.additive_mask(self.dtype)[:n, :n]
            pad = torch.arange(n, width)
            mask[b, 0, pad, pad] = 0
        return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask,
                "labels": targets, "shift_labels": targets,
                "real_tokens": torch.tensor(sum(lengths))}

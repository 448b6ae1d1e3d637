"""Training data: the run folder's dataset (or any `--dataset`), checked against the language before a step runs."""

from __future__ import annotations

import json
from pathlib import Path

from interpreter import PastaSyntaxError
from pipeline.dataset import DatasetError

# variant -> (column it trains on, model folder name)
VARIANTS = {"pasta": ("annotated", "pasta-sft"), "baseline": ("stripped", "baseline-sft")}


def tag_tokens_setting(where: str | Path, asked: bool | None) -> bool:
    """Whether the student trains with the tag pieces as added tokens: the tokenization the dataset measured its
    costs and promise lengths with (data_gen's `tag_tokens`, in its stats.json), which `asked` may only confirm.
    A dataset without stats.json (a JSONL) takes `asked`, plain text if unset."""
    stats = Path(where) / "stats.json"
    measured = json.loads(stats.read_text(encoding="utf-8")).get("tag_tokens") if stats.is_file() else None
    if measured is None:
        return bool(asked)
    if asked is not None and asked != measured:
        raise DatasetError(f"{where}: the dataset measured its promise lengths and costs with tag_tokens={measured}, "
                           f"but add_tag_tokens is {asked}; leave add_tag_tokens unset to follow the dataset, or "
                           f"rebuild it with --tag_tokens {str(asked).lower()}")
    return measured


def prepare(rows, collator, where: str):
    """Checks every row lays out (columns present, tags valid) and adds its token count as `length`,
    which `train_sampling_strategy: group_by_length` reads."""
    missing = sorted({"messages", collator.text_field} - set(rows.column_names))
    if missing:
        raise DatasetError(f"{where}: no column {', '.join(map(repr, missing))} "
                           f"(columns: {', '.join(rows.column_names)})")
    lengths = []
    for i, row in enumerate(rows):
        try:
            lengths.append(len(collator.layout(row)))
        except PastaSyntaxError as err:
            raise DatasetError(f"{where}, row {i} (id {row.get('id')!r}): {collator.text_field}:{err}") from None
    if "length" in rows.column_names:
        rows = rows.remove_columns("length")
    return rows.add_column("length", lengths)

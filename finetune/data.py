"""Training data: the run folder's dataset (or any `--dataset`), checked against the language before a step runs."""

from __future__ import annotations

import json
from pathlib import Path

from interpreter import PastaSyntaxError

# variant -> (column it trains on, model folder name)
VARIANTS = {"pasta": ("annotated", "pasta-sft"), "baseline": ("stripped", "baseline-sft")}


class DatasetError(ValueError):
    """The dataset cannot be trained on; the message says where and why."""


def load_splits(path: str | Path):
    """A saved DatasetDict (or Dataset) folder, a folder holding <split>.jsonl files, or one .jsonl file (→ train)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(path)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        data = load_from_disk(str(path))
        return data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    if path.is_dir():
        files = {p.stem: str(p) for p in sorted(path.glob("*.jsonl"))}
        if files:
            return load_dataset("json", data_files=files)
    elif path.suffix in (".jsonl", ".json") and path.is_file():
        return DatasetDict(train=load_dataset("json", data_files=str(path), split="train"))
    hint = " (run `make dataset` first, or pass --dataset)" if not path.exists() else ""
    raise DatasetError(f"{path}: not a saved DatasetDict folder, a folder with train.jsonl/test.jsonl, "
                       f"or a .jsonl file{hint}")


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


def split(data, name: str, where: str):
    if name not in data:
        raise DatasetError(f"{where}: no split {name!r} (splits: {', '.join(data) or 'none'})")
    if len(data[name]) == 0:
        raise DatasetError(f"{where}: split {name!r} is empty")
    return data[name]


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

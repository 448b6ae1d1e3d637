"""Instruction data in: the embedded seed set, local JSON/JSONL/parquet files, `save_to_disk` folders
or hub datasets, in ShareGPT (SlimOrca), Alpaca, instruction/response or chat-messages schema."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.jsonl import key_of

SEED_FILE = Path(__file__).with_name("seeds.jsonl")
SEED = "seed"
FORMATS = ("auto", "sharegpt", "alpaca", "instruction_response", "messages", "instructions")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class SourceError(PipelineError, ValueError):
    """A source that cannot be read; the message names the source and what is wrong."""


@dataclass
class Record:
    id: str
    messages: list[dict]  # the prompt conversation, without the answer
    answer: str | None  # None: the answer model writes it
    source: str
    kind: str = ""  # the row's category, if it has one: answers of one kind are alike in length
    draw: int = 0  # which of the answer model's answers to the instruction this record holds


def instruction_id(record_id: str) -> str:
    """The id of the instruction a record answers: a further draw's id is the first's with `-k` added."""
    return record_id.split("-", 1)[0]


def with_draws(records: list[Record], n: int) -> list[Record]:
    """Each record without an answer, and n - 1 copies of it for further draws of the answer model."""
    out = []
    for r in records:
        out.append(r)
        if r.answer is None:
            out += [replace(r, id=f"{r.id}-{k}", draw=k) for k in range(1, n)]
    return out


def detect_format(columns, source: str) -> str:
    cols = set(columns)
    if "conversations" in cols:
        return "sharegpt"
    if "messages" in cols:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"instruction", "response"} <= cols:
        return "instruction_response"
    if "instruction" in cols:
        return "instructions"
    raise SourceError(f"{source}: cannot tell the schema from its columns {sorted(cols)}; expected conversations "
                      "(ShareGPT/SlimOrca), instruction+output (Alpaca), instruction+response, messages, or "
                      "instruction alone")


def _user(instruction: str, extra: str | None) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def to_prompt_and_answer(row: dict, fmt: str) -> tuple[list[dict], str | None]:
    """One row to (prompt messages, answer); raises ValueError for a row that does not fit `fmt`."""
    if fmt == "sharegpt":
        turns = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]]
        return _split_last_answer(turns)
    if fmt == "messages":
        return _split_last_answer([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    user = {"role": "user", "content": _user(row["instruction"], row.get("input"))}
    answer = {"alpaca": "output", "instruction_response": "response"}.get(fmt)
    return system + [user], row[answer] if answer else None


def _split_last_answer(turns: list[dict]) -> tuple[list[dict], str | None]:
    if not turns or not all(isinstance(t["content"], str) for t in turns):
        raise ValueError("empty conversation or a turn without text")
    if turns[-1]["role"] == "assistant":
        return turns[:-1], turns[-1]["content"]
    return turns, None


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError as err:
            raise SourceError(f"{path}: not valid JSON ({err})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise SourceError(f"{path}:{n}: not a JSON object ({err})") from None
    return rows


def _load_rows(source: str, split: str):
    """Rows as a list of dicts or a `datasets.Dataset`."""
    path = Path(source)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return _read_json(path)
    import datasets

    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            raise SourceError(f"{path}: not a dataset saved with save_to_disk ({err})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SourceError(f"{path}: has no split {split!r} (it has {', '.join(loaded)})")
            return loaded[split]
        return loaded
    if path.exists() or source.startswith((".", "/", "~")) or "/" not in source:
        raise SourceError(f"{source}: not a JSON, JSONL or parquet file, a save_to_disk folder, or a hub dataset id")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as err:  # the hub raises many types; all mean "cannot load it here"
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise SourceError(f"{source}: cannot load this hub dataset here ({first}); download it where there is "
                          "internet and pass the local folder or file") from None


def _keep_categories(rows, columns, categories: list[str], source: str):
    if "category" not in columns:
        raise SourceError(f"{source}: has no 'category' column to select {categories} from")
    wanted = set(categories)
    if hasattr(rows, "filter"):
        return rows.filter(lambda row: row["category"] in wanted)
    return [row for row in rows if row.get("category") in wanted]


def load_records(source: str = SEED, fmt: str = "auto", split: str = "train", max_examples: int | None = None,
                 seed: int = 0, categories: list[str] | None = None) -> tuple[list[Record], Counter]:
    """Reads a source into records with stable ids; duplicates and unreadable rows are dropped and counted."""
    if fmt not in FORMATS:
        raise SourceError(f"source_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    rows = _read_json(SEED_FILE) if source == SEED else _load_rows(source, split)
    if len(rows) == 0:
        raise SourceError(f"{source}: holds no rows")
    columns = list(rows.column_names if hasattr(rows, "column_names") else rows[0].keys())
    fmt = detect_format(columns, source) if fmt == "auto" else fmt
    if categories:
        rows = _keep_categories(rows, columns, categories, source)
        if len(rows) == 0:
            raise SourceError(f"{source}: no row has a category among {categories}")
    if max_examples is not None and max_examples < len(rows):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        rows = rows.select(order[:max_examples]) if hasattr(rows, "select") else [rows[i] for i in order[:max_examples]]
    label = SEED if source == SEED else Path(source).name if Path(source).exists() else source
    counts: Counter = Counter()
    records: dict[str, Record] = {}
    for row in rows:
        try:
            messages, answer = to_prompt_and_answer(row, fmt)
        except (KeyError, TypeError, ValueError, AttributeError):
            counts["unreadable-record"] += 1
            continue
        rid = key_of(messages, answer)[:16]
        if rid in records:
            counts["duplicate-record"] += 1
            continue
        records[rid] = Record(rid, messages, answer, label, str(row.get("category") or ""))
    counts["read"] = len(records)
    return list(records.values()), counts

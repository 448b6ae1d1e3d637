"""Training data: the run folder's dataset (or any `--dataset`), checked against the language before a step runs."""

from __future__ import annotations

import json
from pathlib import Path

from interpreter import PastaSyntaxError
from pipeline.dataset import HUB_ID, DatasetError

# variant -> (column it trains on, model folder name)
VARIANTS = {"pasta": ("annotated", "pasta-sft"), "baseline": ("stripped", "baseline-sft")}


def stats_file(where: str | Path) -> Path | None:
    """data_gen's stats.json of the dataset at `where` (a dataset or run folder, or a hub dataset id, whose copy is
    downloaded), or None when it has none (a JSONL, a hub dataset data_gen did not push)."""
    path = Path(where)
    for stats in (path / "stats.json", path / "dataset" / "stats.json"):
        if stats.is_file():
            return stats
    if path.exists() or not HUB_ID.fullmatch(str(where)):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(str(where), "stats.json", repo_type="dataset"))
    except RemoteEntryNotFoundError:  # the repo is there without the file: not built by data_gen
        return None
    except Exception as err:  # offline, unknown id, no access: the hub's own message, on one line
        raise DatasetError(f"{where}: cannot read stats.json from the hub ({type(err).__name__}: {err})") from None


def pushed_as(where: str | Path) -> str:
    """The hub id data_gen pushed the dataset at `where` to (its --hub_repo_id, in its stats.json), else `where`:
    what a model card names as the dataset."""
    stats = stats_file(where) if Path(where).exists() else None
    config = json.loads(stats.read_text(encoding="utf-8")).get("config", {}) if stats else {}
    return config["hub_repo_id"] if config.get("push_to_hub") and config.get("hub_repo_id") else str(where)


def tag_tokens_setting(where: str | Path, asked: bool | None) -> bool:
    """Whether the student trains with the tag pieces as added tokens: the tokenization the dataset measured its
    costs and promise lengths with (data_gen's `tag_tokens`, in its stats.json, local or on the hub), which `asked`
    may only confirm. A dataset without stats.json (a JSONL) takes `asked`, plain text if unset."""
    stats = stats_file(where)
    measured = json.loads(stats.read_text(encoding="utf-8")).get("tag_tokens") if stats else None
    if measured is None:
        return bool(asked)
    if asked is not None and asked != measured:
        raise DatasetError(f"{where}: the dataset measured its promise lengths and costs with tag_tokens={measured}, "
                           f"but add_tag_tokens is {asked}; leave add_tag_tokens unset to follow the dataset, or "
                           f"rebuild it with --tag_tokens {str(asked).lower()}")
    return measured


def prepare(rows, collator, where: str):
    """Checks every row lays out (columns present, tags valid) and adds its token count as `length`,
    which `train_sampling_strategy: group_by_length` reads, and its prompt's as `prompt_length`."""
    missing = sorted({"messages", collator.text_field} - set(rows.column_names))
    if missing:
        raise DatasetError(f"{where}: no column {', '.join(map(repr, missing))} "
                           f"(columns: {', '.join(rows.column_names)})")
    lengths, prompt_lengths = [], []
    for i, row in enumerate(rows):
        try:
            lay = collator.layout(row)
        except PastaSyntaxError as err:
            raise DatasetError(f"{where}, row {i} (id {row.get('id')!r}): {collator.text_field}:{err}") from None
        lengths.append(len(lay))
        prompt_lengths.append(lay.prompt_len)
    rows = rows.remove_columns([c for c in ("length", "prompt_length") if c in rows.column_names])
    return rows.add_column("length", lengths).add_column("prompt_length", prompt_lengths)


def truncation(lengths: list[int], max_length: int | None) -> str | None:
    """What `max_length` cuts off these examples, in one line, or None: a cut example keeps its first rows, so its
    end (the end token that teaches the model to stop included) is never trained."""
    cut = [n for n in lengths if max_length and n > max_length]
    if not cut:
        return None
    return (f"max_length {max_length} cuts {len(cut)} of {len(lengths)} examples (up to {max(cut)} tokens long): "
            f"their ends, the end token included, are never trained; --max_length {max(cut)} keeps them whole")


def tagged_lengths(rows) -> list[int]:
    """Each `prepare`d example's length with its tags, as the PASTA variant lays it out: prompt, the answer in the
    tokenization its dataset measured (data_gen's `total_tokens`), the end token; the same for both variants, so
    that a length rule leaves out the same answers of each. Without `total_tokens`, each row's own `length`."""
    if "total_tokens" not in rows.column_names:
        return list(rows["length"])
    return [prompt + answer + 1 for prompt, answer in zip(rows["prompt_length"], rows["total_tokens"])]


def drop_long(rows, max_length: int, where: str):
    """The `prepare`d examples whose tagged length fits `max_length`, and one line on what was left out (None if
    nothing)."""
    lengths = tagged_lengths(rows)
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    if len(keep) == len(lengths):
        return rows, None
    if not keep:
        raise DatasetError(f"{where}: every example is longer than max_length {max_length} with its tags "
                           f"(the shortest: {min(lengths)} tokens); raise --max_length")
    note = (f"left out {len(lengths) - len(keep)} of {len(lengths)} examples longer than max_length {max_length} with "
            f"their tags (up to {max(lengths)} tokens)")
    return rows.select(keep), note

"""A run's dataset, read one way by every stage: the run folder, its saved `dataset/` folder, a folder of
<split>.jsonl files, one .jsonl file (the train split), or a hub dataset id where the hub is reachable."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import PipelineError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class DatasetError(PipelineError, ValueError):
    """The dataset cannot be read or used; the message says where and why."""


def load_splits(where: str | os.PathLike):
    """The DatasetDict at `where` (see the module docstring); a lone Dataset becomes its train split."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(where)
    for folder in (path, path / "dataset"):  # the dataset folder, or the run folder holding it
        if (folder / "dataset_dict.json").exists() or (folder / "dataset_info.json").exists():
            data = load_from_disk(str(folder))
            return data if isinstance(data, DatasetDict) else DatasetDict(train=data)
        files = {p.stem: str(p) for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}
        if files:
            return load_dataset("json", data_files=files)
    if path.suffix in (".jsonl", ".json") and path.is_file():
        return DatasetDict(train=load_dataset("json", data_files=str(path), split="train"))
    elif not path.exists() and HUB_ID.fullmatch(str(where)):
        return _from_hub(str(where))
    hint = " (run `make dataset` first, or pass --dataset)" if not path.exists() else ""
    raise DatasetError(f"{where}: not a run folder, a saved dataset folder, a folder with train.jsonl/test.jsonl, "
                       f"a .jsonl file or a hub dataset id{hint}")


def _from_hub(repo_id: str):
    from datasets import load_dataset

    try:
        return load_dataset(repo_id)
    except Exception as err:  # offline, unknown id, no access: the hub's own message, on one line
        raise DatasetError(f"{repo_id}: cannot load it from the hub ({type(err).__name__}: {err})") from None


def split(data, name: str, where: str):
    """Split `name` of `data`, which must hold rows."""
    if name not in data:
        raise DatasetError(f"{where}: no split {name!r} (splits: {', '.join(data) or 'none'})")
    if len(data[name]) == 0:
        raise DatasetError(f"{where}: split {name!r} is empty")
    return data[name]

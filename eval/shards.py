"""Many workers, one evaluation: `--shard i/n` generates every n-th prompt into its own files;
`--merge_shards n` joins the n workers' files exactly once, and refuses a gap or an overlap."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.jsonl import read_rows
from pipeline.runfolder import publish
from pipeline.shards import ShardError


def merge(folder: Path, count: int, expected: set[str]) -> list[Path]:
    """Joins every `<name>.shard-i-of-n.jsonl` under `folder` into `<name>.jsonl`; returns the merged files."""
    groups: dict[str, dict[int, Path]] = {}
    for path in folder.glob(f"*.shard-*-of-{count}.jsonl"):
        name, index = re.fullmatch(rf"(.+)\.shard-(\d+)-of-{count}\.jsonl", path.name).groups()
        groups.setdefault(name, {})[int(index)] = path
    if not groups:
        raise ShardError(f"no shard files (*.shard-i-of-{count}.jsonl) under {folder}")
    merged = []
    for name, shards in sorted(groups.items()):
        missing = sorted(set(range(count)) - shards.keys())
        if missing:
            raise ShardError(f"{name}: shards {missing} of {count} have not written anything yet")
        rows, seen = [], {}
        for index, path in sorted(shards.items()):
            for row in read_rows(path):  # a row cut by a kill: that shard redoes the prompt when rerun
                key = row["prompt_id"]
                if key in seen and seen[key] != index:
                    raise ShardError(f"{name}: prompt {key} was answered by shards {seen[key]} and {index}")
                seen[key] = index
                rows.append(row)
        lacking = expected - seen.keys()
        if lacking:
            raise ShardError(f"{name}: {len(lacking)} prompts have no answer yet (e.g. {sorted(lacking)[0]}); "
                             "rerun the shards that own them")
        target = folder / f"{name}.jsonl"
        merged.append(publish(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))
    return merged

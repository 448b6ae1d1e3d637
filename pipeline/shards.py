"""Many workers, one result: `--shard i/n` takes every n-th item from the i-th on and writes its own file
`<name>.shard-i-of-n<suffix>`; a merge joins the n files, each item exactly once, and refuses a gap or an
overlap with a ShardError that names the shard and its file. data_gen, eval and preference sampling all
split their work this way."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import PipelineError


class ShardError(PipelineError, ValueError):
    """Shards that cannot be merged, or a bad `--shard`; the message names the shard and its file."""


def parse_shard(spec: str) -> tuple[int, int]:
    """`"i/n"` as (i, n), with 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ShardError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), not {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_path(path: Path, index: int, count: int) -> Path:
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")

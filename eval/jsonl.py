"""The append-only JSONL caches of eval: read back what a run wrote, minus a last line cut by a kill."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_rows(path: Path) -> Iterator[dict]:
    """Every complete row of `path` (none if it does not exist); a row cut by a kill is made again by the caller."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue

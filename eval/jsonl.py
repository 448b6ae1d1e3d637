"""The append-only JSONL caches of eval: read back what a run wrote, minus a last line cut by a kill."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
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


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    """Appends whole lines and syncs them to disk. A tail cut by a kill mid-write goes first: the next
    row would be glued to it and lost too."""
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # rare (after a kill): find the last whole line
                f.truncate(path.read_bytes().rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())

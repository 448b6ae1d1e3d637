"""The append-only JSONL caches of eval: read back what a run wrote, minus a last line cut by a kill."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def kind(value) -> str:
    """A JSON value's kind as a message names it: null, a list, a number, ..."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "text" if value.strip() else "blank text"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}[type(value)]


class JsonlError(ValueError):
    """A cache line that a kill cannot explain (not JSON, not UTF-8, not an object); names the file and line."""


def read_rows(path: Path) -> Iterator[dict]:
    """Every complete row of `path` (none if it does not exist); a row cut by a kill is made again by the caller."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            # append_rows writes whole lines, so only a last line without its newline can be cut by a kill
            if n == len(lines):
                continue
            what = (f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError)
                    else f"not UTF-8 at column {err.start + 1}")
            raise JsonlError(f"{path}:{n}: broken row ({what}); delete that line and its row is made again") from None
        if not isinstance(row, dict):
            raise JsonlError(f"{path}:{n}: a row must be a JSON object, not {kind(row)}; delete that line "
                             "and its row is made again")
        yield row


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

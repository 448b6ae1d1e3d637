"""Append-only JSONL files, the caches of every stage: a run killed at any moment leaves at worst a torn
last line, which reading drops, so the next run repeats only what was not yet written.

- `read_rows` / `append_rows`: rows of a file, in order (eval's generations, preference samples, judgments).
- `JsonlCache`: one entry per key, the last line of a key winning (data_gen's answers and teacher replies).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path

from .errors import PipelineError
from .runfolder import writing


def kind(value) -> str:
    """A JSON value's kind as a message names it: null, a list, a number, ..."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "text" if value.strip() else "blank text"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}[type(value)]


class JsonlError(PipelineError, ValueError):
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
    with writing(path):
        if path.exists() and path.stat().st_size:
            with open(path, "r+b") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # rare (after a kill): find the last whole line
                    f.truncate(path.read_bytes().rfind(b"\n") + 1)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())


def key_of(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JsonlCache:
    """`put` writes a key once; `update` appends a newer entry for a key, and the last line of a key wins."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.dropped = 0  # unreadable lines found on open (a torn last line, a line broken by hand)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw.rfind(b"\n") + 1  # a kill mid-write leaves a tail without its newline
        for line in raw[:complete].splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (ValueError, TypeError, KeyError):
                self.dropped += 1
        if complete < len(raw):
            self.dropped += 1
            with writing(self.path), open(self.path, "r+b") as f:
                f.truncate(complete)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, **value) -> None:
        """Writes the entry unless the key is there already."""
        if key not in self.entries:
            self._append({"key": key, **value})

    def update(self, key: str, **value) -> None:
        """Writes the entry in place of the key's earlier one."""
        self._append({"key": key, **value})

    def _append(self, entry: dict) -> None:
        line = memoryview((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    while line:  # one whole line per entry, on disk before we go on
                        line = line[os.write(fd, line):]
                    os.fsync(fd)
                except OSError:
                    _truncate(fd, size)  # a failed write leaves no torn line for a later append to run into
                    raise
            finally:
                os.close(fd)
        self.entries[entry["key"]] = entry


def _truncate(fd: int, size: int) -> None:
    with suppress(OSError):  # if this fails too, opening the cache drops the torn last line
        os.ftruncate(fd, size)

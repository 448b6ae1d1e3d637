"""An append-only JSONL cache: one line per key, written and flushed as each result arrives.

A run killed at any moment leaves at worst a torn last line; opening the cache drops it, so
the next run repeats only what was not yet written. `put` writes a key once; `update` appends a
newer entry for a key, and the last line of a key wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path

from .runfolder import writing


def key_of(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JsonlCache:
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

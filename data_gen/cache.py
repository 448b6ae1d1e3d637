"""An append-only JSONL cache: one line per key, written and flushed as each result arrives.

A run killed at any moment leaves at worst a torn last line; opening the cache drops it, so
the next run repeats only what was not yet written and never writes a key twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def key_of(*parts) -> str:
    """A stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JsonlCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.dropped = 0  # unreadable lines found on open (a torn last line, a line broken by hand)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw.rfind(b"\n") + 1  # a kill mid-write leaves a tail without its newline
        for line in raw[:complete].splitlines():
            try:
                entry = json.loads(line)
                self.entries.setdefault(entry["key"], entry)
            except (ValueError, TypeError, KeyError):
                self.dropped += 1
        if complete < len(raw):
            self.dropped += 1
            with open(self.path, "r+b") as f:
                f.truncate(complete)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, **value) -> None:
        if key in self.entries:
            return
        entry = {"key": key, **value}
        with open(self.path, "a", encoding="utf-8") as f:  # one whole line per write, on disk before we go on
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[key] = entry

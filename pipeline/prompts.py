"""Instruction files (`--prompts`): one prompt a line, read the same way by every stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import PipelineError
from .jsonl import kind


def prompt_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class PromptFileError(PipelineError, ValueError):
    """A prompt set that cannot be read as one; the message names the file and, where there is one, the line."""


def read_instructions(path: str | Path) -> list[dict]:
    """One prompt per line: {"instruction": ... or "messages": [...], "id"?: str or int, "category"?: str}, read as
    {"id", "instruction", "messages", "category"} (the instruction is the last message; an id not given is a hash
    of it). Refuses a malformed line and an id or instruction given twice (answers are cached and judged by id)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such file") from None
    except OSError as err:
        raise PromptFileError(f"{path}: cannot read it ({err.strerror})") from None
    out: list[dict] = []
    ids: dict[str, tuple[int, object]] = {}  # id as cached -> (line, id as written)
    texts: dict[str, int] = {}
    for n, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{n}"
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM some editors write first is no content
        except UnicodeDecodeError as err:
            raise PromptFileError(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                  "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: a row must be a JSON object, not {kind(row)}")
        messages = _messages(row, where)
        text = messages[-1]["content"]
        given = row.get("id")
        if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))
                                  or isinstance(given, str) and not given.strip()):
            raise PromptFileError(f"{where}: 'id' must be non-empty text or an integer, not {kind(given)}")
        category = row.get("category") or ""
        if not isinstance(category, str):
            raise PromptFileError(f"{where}: 'category' must be text, not {kind(category)}")
        if text.strip() in texts:
            raise PromptFileError(f"{where}: duplicate instruction, first on line {texts[text.strip()]}")
        texts[text.strip()] = n
        key = prompt_id(text) if given is None else str(given)
        if key in ids:  # 7 and "7" too: ids are compared as the text the caches hold
            first, written = ids[key]
            spelled = f" as {written!r}" if None not in (written, given) and type(written) is not type(given) else ""
            raise PromptFileError(f"{where}: duplicate id {key!r}, first on line {first}{spelled}")
        ids[key] = (n, given)
        out.append({"id": key, "instruction": text, "messages": messages, "category": category})
    if not out:
        raise PromptFileError(f"{path}: no prompts in the file (one JSON object a line, each with an 'instruction')")
    return out


def _messages(row: dict, where: str) -> list[dict]:
    """The chat of a row: its `messages`, or its `instruction` as one user message."""
    if "messages" in row:
        messages = row["messages"]
        if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages)
                or messages[-1].get("role") != "user"):
            raise PromptFileError(f"{where}: 'messages' must be a list of chat messages ending with the user's")
        text, name = messages[-1].get("content"), "the last message's 'content'"
    elif "instruction" in row:
        text, name = row["instruction"], "'instruction'"
        messages = [{"role": "user", "content": text}]
    else:
        raise PromptFileError(f"{where}: the row has no 'instruction'")
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f"{where}: {name} must be non-empty text, not {kind(text)}")
    return messages

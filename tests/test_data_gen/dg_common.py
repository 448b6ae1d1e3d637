"""Shared test data for data_gen: list-style answers, a tiny student tokenizer folder, source files."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import bpe_tokenizer

TOPICS = ["sleep", "water", "walk", "read", "cook", "plan", "rest", "write", "call", "stretch", "garden", "music"]
REASONS = ["the quick brown fox jumps over the lazy dog", "a short habit done daily beats a long one done rarely",
           "small changes are easier to keep than big promises", "friends and family notice the difference soon",
           "it costs nothing and takes only a few minutes", "your body and mind both thank you for it"]


def list_answer(i: int, items: int = 3) -> str:
    """A distinct answer with an intro, a numbered list and a conclusion."""
    lines = [f"Here are {items} tips for day {i}:", ""]
    for k in range(items):
        word = TOPICS[(i + k) % len(TOPICS)]
        lines.append(f"{k + 1}. **{word.title()} more**: {REASONS[(i + 2 * k) % len(REASONS)]}, so try to {word} "
                     f"on day {i}.")
    lines += ["", "Together they add up."]
    return "\n".join(lines)


def student_dir(tmp: Path) -> str:
    """The tiny BPE tokenizer saved as a folder that `--student` can name."""
    path = tmp / "student"
    if not path.exists():
        bpe_tokenizer().save_pretrained(str(path))
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instruction_source(tmp: Path, answers: list[str]) -> Path:
    rows = [{"instruction": f"Give me tips, please ({i}).", "response": a} for i, a in enumerate(answers)]
    return write_jsonl(tmp / "source.jsonl", rows)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

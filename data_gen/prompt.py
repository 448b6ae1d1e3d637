"""The annotation prompt of the LLM teacher: what Pasta-Lang is, then 7 hand-annotated examples
(data files in examples/, one per file) as earlier turns of the conversation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from interpreter import CLOSE_TAG, OPEN_TAG, SYNC_TAG, make_block, make_document, promise_tag, render, strip
from pipeline.jsonl import key_of

EXAMPLES_DIR = Path(__file__).with_name("examples")
INSTRUCTION_MARK, ANSWER_MARK = "=== instruction ===\n", "=== answer ===\n"

SYSTEM = """\
You annotate answers with Pasta-Lang tags so that an interpreter can write the independent parts of an \
answer in parallel.

You receive an instruction and an answer to it. Reply with the same answer, character for character, with \
tags inserted. Change nothing else: do not add, remove, fix or move a single character, do not wrap the \
answer in a code fence, and add no comment of your own.

The tags:
- {promise} announces an independent chunk about T (a short phrase of at most 8 words, \
without ", < or >), about N tokens long. It stands exactly where the chunk begins.
- {open}...{close} holds the chunk itself, right after its promise.
- {sync} makes what follows wait until every chunk above it is written. Put it before later text that \
refers to the chunks, such as a conclusion.

Rules:
- A chunk must make sense without the other chunks: it may rely on the text before its promise, never on a \
sibling chunk.
- Good chunks are list items, steps, sections and paragraphs that each make their own point. Keep an \
introduction and a conclusion outside the chunks.
- The line break before an item goes inside its chunk: {example}
- Chunks do not nest: no tag inside {open}...{close}.
- Do not fork tiny pieces of a few words: tags cost tokens too. Short facts, single paragraphs and code \
usually stay as they are, without any tag.
- N is your estimate; it is corrected afterwards.""".format(
    promise=promise_tag("T", "N"), open=OPEN_TAG, close=CLOSE_TAG, sync=SYNC_TAG,
    # the stored form as the language prints it, with its line break written out as the two characters \n
    example=render(make_document(["Intro:", make_block("First", 20, "\n1. First item")])).replace("\n", "\\n"))


@dataclass(frozen=True)
class Example:
    name: str
    instruction: str
    annotated: str


def read_example(path: Path) -> Example:
    text = path.read_text(encoding="utf-8")
    if not text.startswith(INSTRUCTION_MARK) or f"\n{ANSWER_MARK}" not in text:
        raise ValueError(f"{path}: an example starts with {INSTRUCTION_MARK.strip()!r} and has an "
                         f"{ANSWER_MARK.strip()!r} line")
    instruction, answer = text[len(INSTRUCTION_MARK):].split(f"\n{ANSWER_MARK}", 1)
    return Example(path.stem, instruction, answer[:-1] if answer.endswith("\n") else answer)


@cache
def examples() -> tuple[Example, ...]:
    return tuple(read_example(p) for p in sorted(EXAMPLES_DIR.glob("*.txt")))


def task(instruction: str, answer: str) -> str:
    return f"Instruction:\n{instruction}\n\nAnswer to annotate:\n{answer}"


def instruction_of(messages: list[dict]) -> str:
    """What the teacher is told was asked: the prompt's system and user turns."""
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))


def messages_for(prompt: list[dict], answer: str) -> list[dict]:
    chat = [{"role": "system", "content": SYSTEM}]
    for ex in examples():
        chat += [{"role": "user", "content": task(ex.instruction, strip(ex.annotated))},
                 {"role": "assistant", "content": ex.annotated}]
    return chat + [{"role": "user", "content": task(instruction_of(prompt), answer)}]


@cache
def version() -> str:
    """Changes whenever the prompt or an example changes, so cached replies to an old prompt are not reused."""
    return key_of(SYSTEM, [(e.instruction, e.annotated) for e in examples()])[:12]

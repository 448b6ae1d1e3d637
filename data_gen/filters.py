"""Filters: every answer and every teacher reply passes named rules, each counted in stats.json.

A rejected example is counted under the first rule it breaks. Fixes (teacher noise removed,
promise lengths rewritten) keep the example and are counted apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from interpreter import (
    Document,
    PastaSyntaxError,
    cross_block_repetition,
    make_document,
    measure,
    parse,
    render,
    repetition,
)

from .promises import Measured, measured

# rejection rules, in the order they are checked
RULES = {
    "unreadable-record": "a source row that does not fit its schema",
    "duplicate-record": "the same prompt and answer seen before in the source",
    "empty-answer": "the answer is empty",
    "answer-truncated": "the answer model hit its length cap and no full line was left to keep",
    "repetitive-answer": "the answer repeats itself (share of repeated word 4-grams above max_repetition)",
    "answer-has-tags": "the original answer already holds Pasta-Lang tags, so strip() cannot be checked",
    "teacher-failed": "the teacher gave no reply (the request failed after its retries)",
    "invalid": "the reply is not valid Pasta-Lang (see invalid_by_validator_rule)",
    "nesting": "a promise, sync or block inside a block",
    "bad-topic": "a topic breaks the topic rules (empty, over 8 words, or holds \", < or >)",
    "changed-text": "strip(reply) differs from the original answer by at least one character",
    "empty-block": "a block holds no text",
    "too-few-blocks": "fewer blocks than min_blocks (but not zero)",
    "too-many-blocks": "more blocks than max_blocks",
    "repeated-blocks": "blocks repeat one another: two promises give one topic (list numbers aside), or the share of "
                       "the blocks' word 3-grams that a sibling block holds is above max_block_repetition",
    "no-parallelism-over-share": "an answer with no blocks beyond the no_parallel_share of the kept set",
}
FIXES = {
    "answer-trimmed": "an answer cut by the length cap was trimmed back to its last full line",
    "unwrapped-fence": "a code fence around the whole reply was removed",
    "outer-whitespace": "whitespace around the whole reply was made the original's",
    "tokens-rewritten": "a promise's tokens was rewritten to its block's true length",
}


@dataclass
class Verdict:
    kept: Measured | None = None  # the stored form to keep and its costs, None when rejected
    rule: str | None = None
    detail: str | None = None  # the validator's own rule name and message, for `invalid`
    fixes: list[str] = field(default_factory=list)

    @property
    def annotated(self) -> str | None:
        """The stored form to keep, None when rejected."""
        return render(self.kept.doc) if self.kept else None


def check_answer(answer: str, max_repetition: float) -> str | None:
    """The rule an original answer breaks, or None."""
    if not answer.strip():
        return "empty-answer"
    if repetition(answer) > max_repetition:
        return "repetitive-answer"
    try:
        tagged = parse(answer).stripped != answer
    except PastaSyntaxError:
        tagged = True  # invalid Pasta-Lang is a tag all the same
    return "answer-has-tags" if tagged else None


def unwrap_fence(reply: str) -> str | None:
    """The inside of a code fence that wraps the whole reply (```lang ... ```), or None."""
    text = reply.strip()
    if not (text.startswith("```") and text.endswith("```") and "\n" in text):
        return None
    header, body = text[3:].split("\n", 1)
    if not re.fullmatch(r"[\w+.-]*", header.strip()):
        return None
    body = body[:-3]
    return body[:-1] if body.endswith("\n") else body


def _outer_whitespace(reply: str, original: str) -> str:
    lead = original[:len(original) - len(original.lstrip())]
    trail = original[len(original.rstrip()):]
    return lead + reply.strip() + trail


def _candidates(reply: str, original: str) -> list[tuple[str, list[str]]]:
    """The reply as given, then with teacher noise removed, each with the fixes it took."""
    out = [(reply, [])]
    unwrapped = unwrap_fence(reply)
    if unwrapped is not None and unwrap_fence(original) is None:
        out.append((unwrapped, ["unwrapped-fence"]))
    for text, fixes in list(out):
        trimmed = _outer_whitespace(text, original)
        if trimmed != text:
            out.append((trimmed, [*fixes, "outer-whitespace"]))
    return out


def _read(text: str, original: str) -> Document | Verdict:
    """`text` parsed, or the verdict that rejects it."""
    try:
        doc = parse(text)
    except PastaSyntaxError as err:
        rule = err.rule if err.rule in ("nesting", "bad-topic") else "invalid"
        return Verdict(rule=rule, detail=f"{err.rule}: {err}")
    return doc if doc.stripped == original else Verdict(rule="changed-text")


def blocks_repeat(doc: Document, max_block_repetition: float) -> bool:
    """Whether an answer's blocks repeat one another. A block sees its own promise's topic and no sibling, so a
    student taught on such answers writes one topic, then one block, again and again."""
    topics = [re.sub(r"^\d+\.\s*", "", p.topic).lower() for p in doc.promises]
    shared = cross_block_repetition([b.text for b in doc.blocks])
    return len(set(topics)) < len(topics) or (shared or 0.0) > max_block_repetition


def check_reply(reply: str | Measured | None, original: str, tokenizer, granularity: int = 10, min_blocks: int = 1,
                max_blocks: int = 12, max_block_repetition: float = 1.0) -> Verdict:
    """Checks a teacher's reply against the original answer (one that `check_answer` passed); a kept reply gets
    true promise lengths and its costs. A Measured reply (the structural teacher's) holds them already, under
    the same tokenizer and granularity. `max_block_repetition` 1 (the default) keeps repeated topics and blocks."""
    if reply is None:
        return Verdict(rule="teacher-failed")
    if isinstance(reply, Measured):
        doc, fixes = reply.doc, []
        if doc.stripped != original:
            return Verdict(rule="changed-text")
    else:
        for text, took in _candidates(reply, original):
            read = _read(text, original)
            if isinstance(read, Document):
                doc, fixes = read, took
                break
        else:
            return read  # the verdict on the reply with every kind of noise removed
    if any(not b.text.strip() for b in doc.blocks):
        return Verdict(rule="empty-block", fixes=fixes)
    n = len(doc.blocks)
    if n == 0:  # a sync with nothing to wait for is dropped
        plain = make_document([original])
        return Verdict(Measured(plain, measure(plain, tokenizer)), fixes=fixes)
    if n < min_blocks:
        return Verdict(rule="too-few-blocks", fixes=fixes)
    if n > max_blocks:
        return Verdict(rule="too-many-blocks", fixes=fixes)
    if max_block_repetition < 1 and blocks_repeat(doc, max_block_repetition):
        return Verdict(rule="repeated-blocks", fixes=fixes)
    if isinstance(reply, Measured):
        return Verdict(reply, fixes=fixes)
    kept, changed = measured(doc, tokenizer, granularity)
    return Verdict(kept, fixes=fixes + ["tokens-rewritten"] * changed)


def keep_share(parallel: list, plain: list, share: float) -> tuple[list, list]:
    """(plain examples kept, plain examples dropped) so that at most `share` of the kept set is plain;
    `plain` is in a stable order (by id), so the same examples are kept on every run."""
    if share >= 1:
        return plain, []
    room = int(share * len(parallel) / (1 - share))
    return plain[:room], plain[room:]


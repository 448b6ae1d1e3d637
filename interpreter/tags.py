"""Pasta-Lang's lexer: text in, text and tag events out, piece by piece.

The lexer knows what one tag looks like; the rules about how tags combine live in
`parser.py` (stored form) and in the engine (one thread at a time). It never raises:
a malformed Pasta-Lang tag becomes a `BadTag` event naming the rule it breaks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import regex

NAMES = ("promise", "async", "sync")
MAX_TAG_CHARS = 300  # a Pasta-Lang tag longer than this is reported as unterminated
MAX_TOPIC_WORDS = 8
CANONICAL_TOKENS_DIGITS = 6  # the longest length the canonical form writes (the language itself sets none)

PROMISE = "promise"
ASYNC_OPEN = "async"
ASYNC_CLOSE = "/async"
SYNC = "sync"

_NAME_CHAR = re.compile(r"[A-Za-z0-9_.:\-]")
_OPENER = re.compile(r"</?([A-Za-z0-9_.:\-]*)")  # `<` or `</` and the name after it
_ATTR = re.compile(r'\s+([A-Za-z_][\w\-]*)\s*=\s*"([^"]*)"')
_UNQUOTED = re.compile(r"\s+([A-Za-z_][\w\-]*)\s*=\s*([^\s\"/>]+)")


@dataclass(frozen=True)
class Text:
    text: str
    start: int


@dataclass(frozen=True)
class Tag:
    kind: str  # PROMISE, ASYNC_OPEN, ASYNC_CLOSE or SYNC
    raw: str
    start: int
    topic: str | None = None
    tokens: int | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.raw)


@dataclass(frozen=True)
class BadTag:
    rule: str
    message: str
    raw: str
    start: int


Event = Text | Tag | BadTag


PROMISE_OPENING = '<promise topic="'  # a canonical promise tag up to its topic


def promise_tag(topic: str, tokens: int) -> str:
    """The canonical text of a promise tag."""
    return f'{PROMISE_OPENING}{topic}" tokens="{tokens}"/>'


def in_topic(pending: str) -> bool:
    """Whether a lexer holding `pending` is inside a canonical promise tag's topic (its opening quote written, not
    its closing one)."""
    return pending.startswith(PROMISE_OPENING) and '"' not in pending[len(PROMISE_OPENING):]


# The canonical text of the other tags (a sync may also hold spaces before its `/>`).
OPEN_TAG = "<async>"
CLOSE_TAG = "</async>"
SYNC_TAG = "<sync/>"


def check_topic(topic: str) -> str | None:
    """Why `topic` breaks the topic rules, or None when it is fine."""
    if any(c in topic for c in '<>"'):
        return 'topic must not contain ", < or >'
    words = topic.split()
    if not words:
        return "topic must not be empty"
    if len(words) > MAX_TOPIC_WORDS:
        return f"topic has {len(words)} words, at most {MAX_TOPIC_WORDS} are allowed"
    return None


def _bad(rule: str, message: str, raw: str, start: int) -> BadTag:
    return BadTag(rule, message, raw, start)


def _read_promise(raw: str, start: int) -> Tag | BadTag:
    if not raw.endswith("/>"):
        return _bad("promise-not-self-closing",
                    'a promise tag is self-closing: write <promise topic="..." tokens="N"/>', raw, start)
    body = raw[len("<promise"):-2]
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        m = _ATTR.match(body, pos)
        if m is None:
            if body[pos:].strip() == "":
                break
            if _UNQUOTED.match(body, pos):
                return _bad("unquoted-value", 'attribute values must be in double quotes, as in tokens="20"',
                            raw, start)
            return _bad("malformed-attributes",
                        'cannot read the attributes; write <promise topic="..." tokens="N"/>', raw, start)
        name, value = m.group(1), m.group(2)
        if name not in ("topic", "tokens"):
            return _bad("unknown-attribute", f"unknown attribute {name!r}; a promise takes topic and tokens",
                        raw, start)
        if name in attrs:
            return _bad("duplicate-attribute", f"attribute {name!r} is given twice", raw, start)
        attrs[name] = value
        pos = m.end()
    for name in ("topic", "tokens"):
        if name not in attrs:
            return _bad("missing-attribute", f"a promise needs the attribute {name!r}", raw, start)
    problem = check_topic(attrs["topic"])
    if problem:
        return _bad("bad-topic", problem, raw, start)
    if not re.fullmatch(r"\d+", attrs["tokens"]) or int(attrs["tokens"]) == 0:
        return _bad("bad-tokens", f'tokens must be a positive integer, not "{attrs["tokens"]}"', raw, start)
    return Tag(PROMISE, raw, start, topic=attrs["topic"], tokens=int(attrs["tokens"]))


def read_tag(raw: str, start: int) -> Tag | BadTag:
    """Reads one complete Pasta-Lang tag (from its `<` through its first `>`)."""
    closing = raw.startswith("</")
    name = _OPENER.match(raw).group(1)
    if name == "promise":
        if closing:
            return _bad("closing-promise", "a promise is self-closing; there is no </promise>", raw, start)
        return _read_promise(raw, start)
    if name == "async":
        if closing:
            if raw == CLOSE_TAG:
                return Tag(ASYNC_CLOSE, raw, start)
            return _bad("malformed-async", "write the end of a block as </async>", raw, start)
        if raw == OPEN_TAG:
            return Tag(ASYNC_OPEN, raw, start)
        if raw.endswith("/>"):
            return _bad("self-closing-async", "an async block is not self-closing: write <async> ... </async>",
                        raw, start)
        return _bad("malformed-async", "<async> takes no attributes: write <async>", raw, start)
    # name == "sync"
    if closing:
        return _bad("closing-sync", "there is no </sync>: a sync is written <sync/>", raw, start)
    if re.fullmatch(r"<sync\s*/>", raw):
        return Tag(SYNC, raw, start)
    if raw.endswith("/>"):
        return _bad("malformed-sync", "<sync/> takes no attributes: write <sync/>", raw, start)
    return _bad("sync-not-self-closing", "a sync is self-closing: write <sync/>", raw, start)


class Lexer:
    """Streaming lexer. `feed` returns the events completed so far; `close` flushes the rest.

    Text that might still become a tag (`<asy` at the end of what was fed) is held back
    until the next piece decides; everything else is reported at once. Feeding a text in
    any number of pieces gives the same events as feeding it whole (adjacent Text merged).
    """

    def __init__(self) -> None:
        self._buf = ""
        self._offset = 0  # offset of _buf[0] in the whole input

    def feed(self, piece: str) -> list[Event]:
        self._buf += piece
        return self._scan(final=False)

    def close(self) -> list[Event]:
        return self._scan(final=True)

    @property
    def pending(self) -> str:
        """Text held back because it may be the start of a tag."""
        return self._buf

    def _scan(self, final: bool) -> list[Event]:
        events: list[Event] = []
        buf, i, text_start = self._buf, 0, 0

        def flush_text(end: int) -> None:
            if end > text_start:
                events.append(Text(buf[text_start:end], self._offset + text_start))

        while True:
            lt = buf.find("<", i)
            if lt < 0:
                i = len(buf)
                break
            status, end = self._classify(buf, lt, final)
            if status == "wait":
                i = lt
                break
            if status == "text":
                i = lt + 1
                continue
            flush_text(lt)
            raw = buf[lt:end]
            if status == "tag":
                events.append(read_tag(raw, self._offset + lt))
            else:
                events.append(_bad("unterminated-tag", "this tag never ends with >", raw, self._offset + lt))
            i = text_start = end
        flush_text(i)
        self._buf = buf[i:]
        self._offset += i
        return events

    @staticmethod
    def _classify(buf: str, lt: int, final: bool) -> tuple[str, int]:
        """What the `<` at `lt` starts: ("text", _), ("wait", _), ("tag"|"unterminated", end)."""
        j = lt + 1
        if j < len(buf) and buf[j] == "/":
            j += 1
        k = j
        while k < len(buf) and _NAME_CHAR.match(buf[k]):
            k += 1
        if k == len(buf) and not final:
            # the name may go on in the next piece; only wait while it can still be ours
            name = buf[j:k]
            return ("wait", 0) if any(n.startswith(name) for n in NAMES) else ("text", 0)
        if buf[j:k] not in NAMES:
            return "text", 0
        gt = buf.find(">", k, lt + MAX_TAG_CHARS)
        if gt >= 0:
            return "tag", gt + 1
        if len(buf) - lt >= MAX_TAG_CHARS:
            return "unterminated", lt + MAX_TAG_CHARS
        return ("unterminated", len(buf)) if final else ("wait", 0)


# The tags a thread may write, in the canonical form the engine's guard keeps a model to (every string
# that fully matches is read by `read_tag` as a valid tag of that kind).
# a topic word: at most 24 characters, and no digit after a number and its dot (`3.5` too; a student wrote
# `topic="1.1.1.1.1.1.1.1.1.1.1.1."`, 24 tokens on main's critical path, where the number ends the topic)
_WORD = r'(?:(?!\d+\.\d)[^\s"<>*]){1,24}'
# a tag is one line, bounded so that a model cannot pad it with spaces forever: a student that broke its promise tag
# over lines (`topic="3. Add"\n\n tokens="3"\n\n3.`) left it to the repairs
_SPACE = r"(?: {1,3})"


@functools.lru_cache
def _canonical(kind: str, topic_words: int, tokens_digits: int) -> regex.Pattern:
    if kind == PROMISE:
        topic = rf"{_SPACE}?{_WORD}(?:{_SPACE}{_WORD}){{0,{topic_words - 1}}}{_SPACE}?"
        length = rf"[1-9][0-9]{{0,{tokens_digits - 1}}}"
        return regex.compile(rf'<promise{_SPACE}topic="{topic}"{_SPACE}tokens="{length}"{_SPACE}?/>')
    return regex.compile({SYNC: rf"<sync{_SPACE}?/>", ASYNC_CLOSE: r"</async>"}[kind])


MAIN_TAGS = (PROMISE, SYNC)
BLOCK_TAGS = (ASYNC_CLOSE,)


_OPENERS = {PROMISE: "<promise", SYNC: "<sync", ASYNC_CLOSE: "</async"}


def _off_limits(text: str, kinds: tuple[str, ...]) -> bool:
    """Whether `text` writes a tag name the thread may not write, or one that imitates a Pasta-Lang
    name (<promises, <promize, <asyncio), or starts one it could only finish as such."""
    allowed = [_OPENERS[k] for k in kinds]
    for m in _OPENER.finditer(text):
        opener = m.group(0)
        if not m.group(1).startswith(("prom", *NAMES)) or opener in allowed:
            continue  # ordinary text, or an allowed tag (whose attributes the lexer checks)
        if m.end() == len(text) and any(a.startswith(opener) for a in allowed):
            continue  # an allowed tag's name, still being written
        return True
    return False


def may_take(pending: str, piece: str, kinds: tuple[str, ...], end: bool = False,
             topic_words: int = MAX_TOPIC_WORDS, tokens_digits: int = CANONICAL_TOKENS_DIGITS) -> bool:
    """Whether a thread whose lexer holds `pending` can take `piece` (and then end, if `end`) and still
    write only valid tags of `kinds`: no bad tag, no tag of another kind, and a tag being written that
    can still be completed. Stricter than the lexer: a name that starts with a Pasta-Lang
    name, or with `prom`, is taken for a tag, so that a model kept from writing `<promise` inside a
    block cannot write `<promises` or `<promis defines` instead, and stops at `<prom` (text such as
    `<asyncio>` or `<prompt>` is lost to the guard, not to the language). A promise's topic is held to one
    line of words without `*`, as the dataset writes them (a student copying its list's markdown wrote
    `topic="1. **1. **1. **1."` and a block that repeated it to the budget), and to fewer words than the
    language allows (`topic_words`); its length to `tokens_digits` digits."""
    text = pending + piece
    if _off_limits(text, kinds):
        return False
    lexer = Lexer()
    events = lexer.feed(text) + (lexer.close() if end else [])
    if any(isinstance(ev, BadTag) or (isinstance(ev, Tag) and ev.kind not in kinds) for ev in events):
        return False
    rest = lexer.pending
    name = _OPENER.match(rest) if rest else None
    if name is None or (name.end() == len(rest) and name.group(1) not in NAMES):
        return True  # nothing pending, or a name that may still turn out to be ordinary text
    return any(_canonical(k, topic_words, tokens_digits).fullmatch(rest, partial=True) for k in kinds)

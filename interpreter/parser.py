"""The stored form: validation, its structure, `strip`, and `render`, its one printer.

`StreamParser` checks the rules of PASTA-LANG.md as text arrives; `parse` is the same
parser fed the whole text at once, so the two cannot disagree. `make_document` builds a
Document from its parts (tags spelled canonically by `make_block` and `make_sync`), and
`render` prints any Document, so no other code writes tags from string literals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .tags import (
    ASYNC_CLOSE,
    ASYNC_OPEN,
    CLOSE_TAG,
    OPEN_TAG,
    PROMISE,
    SYNC,
    SYNC_TAG,
    BadTag,
    Lexer,
    Tag,
    Text,
    promise_tag,
)


class PastaSyntaxError(ValueError):
    """A stored sequence breaks a Pasta-Lang rule; `line` and `column` are 1-based."""

    def __init__(self, rule: str, message: str, offset: int, line: int, column: int):
        super().__init__(f"{line}:{column}: {message} [{rule}]")
        self.rule, self.message, self.offset, self.line, self.column = rule, message, offset, line, column


# Structural events, in stored order.
@dataclass(frozen=True)
class MainText:
    text: str
    start: int


@dataclass(frozen=True)
class BlockText:
    text: str
    start: int


@dataclass(frozen=True)
class Promise:
    topic: str
    tokens: int
    raw: str
    start: int


@dataclass(frozen=True)
class BlockOpen:
    raw: str
    start: int


@dataclass(frozen=True)
class BlockClose:
    raw: str
    start: int


@dataclass(frozen=True)
class Sync:
    raw: str
    start: int


Event = MainText | BlockText | Promise | BlockOpen | BlockClose | Sync


@dataclass(frozen=True)
class Block:
    """One async block: its promise and its content (between <async> and </async>)."""

    promise: Promise
    open: BlockOpen
    text: str
    close: BlockClose


@dataclass(frozen=True)
class Document:
    """A valid stored sequence, as an ordered list of main text, blocks and syncs."""

    text: str
    segments: tuple[MainText | Block | Sync, ...]

    @property
    def blocks(self) -> list[Block]:
        return [s for s in self.segments if isinstance(s, Block)]

    @property
    def promises(self) -> list[Promise]:
        return [b.promise for b in self.blocks]

    @property
    def syncs(self) -> list[Sync]:
        return [s for s in self.segments if isinstance(s, Sync)]

    @property
    def main_text(self) -> str:
        return "".join(s.text for s in self.segments if isinstance(s, MainText))

    @property
    def stripped(self) -> str:
        return "".join(s.text for s in self.segments if not isinstance(s, Sync))

    def stats(self) -> dict:
        return {"blocks": len(self.blocks), "syncs": len(self.syncs)}


_MAIN, _AFTER_PROMISE, _BLOCK = "main", "after-promise", "block"


@dataclass
class StreamParser:
    """Validates a stored sequence fed piece by piece; raises PastaSyntaxError at the first broken rule."""

    _lexer: Lexer = field(default_factory=Lexer)
    _state: str = _MAIN
    _opened: Tag | None = None  # the promise or <async> the state refers to
    _lines: list[int] = field(default_factory=lambda: [0])  # offsets where lines start
    _seen: int = 0

    def feed(self, piece: str) -> list[Event]:
        self._track_lines(piece)
        return self._structure(self._lexer.feed(piece))

    def close(self) -> list[Event]:
        events = self._structure(self._lexer.close())
        if self._state == _AFTER_PROMISE:
            self._fail("promise-without-block", "this promise has no async block right after it", self._opened.start)
        if self._state == _BLOCK:
            self._fail("unclosed-block", "this async block is never closed with </async>", self._opened.start)
        return events

    def _track_lines(self, piece: str) -> None:
        at = piece.find("\n")
        while at >= 0:
            self._lines.append(self._seen + at + 1)
            at = piece.find("\n", at + 1)
        self._seen += len(piece)

    def _fail(self, rule: str, message: str, offset: int) -> None:
        line = _bisect_right(self._lines, offset)
        raise PastaSyntaxError(rule, message, offset, line, offset - self._lines[line - 1] + 1)

    def _structure(self, lexed) -> list[Event]:
        out: list[Event] = []
        for ev in lexed:
            if isinstance(ev, BadTag):
                self._fail(ev.rule, ev.message, ev.start)
            if self._state == _AFTER_PROMISE and not (isinstance(ev, Tag) and ev.kind == ASYNC_OPEN):
                self._fail("promise-without-block", "this promise has no async block right after it",
                           self._opened.start)
            if isinstance(ev, Text):
                out.append((BlockText if self._state == _BLOCK else MainText)(ev.text, ev.start))
            elif self._state == _BLOCK:
                if ev.kind != ASYNC_CLOSE:
                    what = {PROMISE: "a promise", SYNC: "a sync", ASYNC_OPEN: "an async block"}[ev.kind]
                    self._fail("nesting", f"{what} inside an async block (v1 has no nesting)", ev.start)
                out.append(BlockClose(ev.raw, ev.start))
                self._state = _MAIN
            elif ev.kind == PROMISE:
                out.append(Promise(ev.topic, ev.tokens, ev.raw, ev.start))
                self._state, self._opened = _AFTER_PROMISE, ev
            elif ev.kind == ASYNC_OPEN:
                if self._state != _AFTER_PROMISE:
                    self._fail("block-without-promise", "this async block has no promise right before it",
                               ev.start)
                out.append(BlockOpen(ev.raw, ev.start))
                self._state, self._opened = _BLOCK, ev
            elif ev.kind == ASYNC_CLOSE:
                self._fail("stray-close", "</async> without an open async block", ev.start)
            else:
                out.append(Sync(ev.raw, ev.start))
        return out


def _bisect_right(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] <= offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


def events_to_document(text: str, events: list[Event]) -> Document:
    segments: list = []
    pending: dict = {}
    for ev in events:
        if isinstance(ev, MainText):
            if segments and isinstance(segments[-1], MainText):
                segments[-1] = MainText(segments[-1].text + ev.text, segments[-1].start)
            else:
                segments.append(ev)
        elif isinstance(ev, Promise):
            pending = {"promise": ev, "text": ""}
        elif isinstance(ev, BlockOpen):
            pending["open"] = ev
        elif isinstance(ev, BlockText):
            pending["text"] += ev.text
        elif isinstance(ev, BlockClose):
            segments.append(Block(pending["promise"], pending["open"], pending["text"], ev))
        else:
            segments.append(ev)
    return Document(text, tuple(segments))


def parse(text: str) -> Document:
    """Parses and validates a stored sequence; raises PastaSyntaxError (with line:column) if invalid."""
    parser = StreamParser()
    events = parser.feed(text) + parser.close()
    return events_to_document(text, events)


def validate(text: str) -> PastaSyntaxError | None:
    try:
        parse(text)
    except PastaSyntaxError as err:
        return err
    return None


def strip(text: str) -> str:
    """Stored form to stitched form: every tag removed, nothing else changed."""
    return parse(text).stripped


def render(doc: Document) -> str:
    """The stored form of `doc`, every tag as its segment spells it: render(parse(s)) == s, and
    parse(render(doc)) == doc for a valid Document built by `make_document`."""
    return "".join(_texts(doc.segments))


def _texts(segments: Iterable[MainText | Block | Sync]) -> Iterable[str]:
    for seg in segments:
        if isinstance(seg, Block):
            yield from (seg.promise.raw, seg.open.raw, seg.text, seg.close.raw)
        else:
            yield seg.text if isinstance(seg, MainText) else seg.raw


def make_block(topic: str, tokens: int, text: str, promise_raw: str | None = None) -> Block:
    """A block holding `text` after its promise, its tags spelled canonically (the promise as `promise_raw`,
    when given); `make_document` sets its offsets."""
    raw = promise_tag(topic, tokens) if promise_raw is None else promise_raw
    return Block(Promise(topic, tokens, raw, 0), BlockOpen(OPEN_TAG, 0), text, BlockClose(CLOSE_TAG, 0))


def make_sync(raw: str = SYNC_TAG) -> Sync:
    """A sync, spelled canonically unless `raw` is given; `make_document` sets its offset."""
    return Sync(raw, 0)


def make_document(parts: Iterable[str | MainText | Block | Sync]) -> Document:
    """The Document of main text, blocks and syncs in stored order, with offsets as `parse` sets them (adjacent
    texts joined, empty ones dropped). Not validated: parse(render(doc)) checks it."""
    segments: list[MainText | Block | Sync] = []
    at = 0
    for part in parts:
        if isinstance(part, Block):
            promise = Promise(part.promise.topic, part.promise.tokens, part.promise.raw, at)
            opened = BlockOpen(part.open.raw, promise.start + len(promise.raw))
            closed = BlockClose(part.close.raw, opened.start + len(opened.raw) + len(part.text))
            segments.append(Block(promise, opened, part.text, closed))
            at = closed.start + len(closed.raw)
        elif isinstance(part, Sync):
            segments.append(Sync(part.raw, at))
            at += len(part.raw)
        else:
            text = part.text if isinstance(part, MainText) else part
            if segments and isinstance(segments[-1], MainText):
                segments[-1] = MainText(segments[-1].text + text, segments[-1].start)
            elif text:
                segments.append(MainText(text, at))
            at += len(text)
    return Document("".join(_texts(segments)), tuple(segments))

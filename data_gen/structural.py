"""The structural teacher: offline, deterministic and LLM-free. It is a rule-based stand-in for an LLM
teacher, not a judge of meaning: it forks what the layout of an answer says is independent.

List items, steps, bold-headed items, sections under headings and self-contained paragraphs become
promise + async blocks; a `<sync/>` goes before any later text (a conclusion usually refers to the
blocks), except a short lead-in such as "Cons:" that only introduces the next list. Topics come
from each item's head: its bold phrase, the words before a colon, or its first words. Each way of
cutting the answer is measured under the student's tokenizer and the best theoretical speedup wins
(items are grouped into one block only as far as needed to pay for the tags or to keep within
max_blocks); when no cut beats plain decoding, the answer stays as it is (it teaches when not to fork).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from interpreter import Document, PastaSyntaxError, make_block, make_document, make_sync, parse, render
from interpreter.tags import check_topic

from .promises import Measured, measured

TEACHER = "structural (rule-based, offline)"

_LIST_ITEM = re.compile(r"(?P<indent>[ \t]*)(?:(?P<number>\d{1,3})[.)]|(?P<bullet>[-*+•]))[ \t]+(?P<head>\S.*)")
_STEP = re.compile(r"(?:Step|STEP)[ \t]+(?P<number>\d{1,3})[ \t]*[:.)\-–][ \t]*(?P<head>.*)")
_BOLD = re.compile(r"\*\*(?P<head>[^*\n]+)\*\*")
_HEADING = re.compile(r"(?P<hashes>#{1,6})[ \t]+(?P<head>\S.*)")
_FENCE = re.compile(r"[ \t]*(```|~~~)")
# A paragraph that opens like this leans on what came before it (a pronoun, a consequence, a conclusion),
# so it is not forked; additive openers ("Another", "Additionally", "On the other hand") are fine.
_LEANS_BACK = re.compile(
    r"(this|these|that|those|it|its|it's|they|their|them|he|she|his|her|here|there|such|both|each|however|"
    r"therefore|thus|so|but|and|or|then|next|finally|lastly|overall|ultimately|hence|consequently|otherwise|"
    r"instead|still|yet|because|again|remember|whether|meanwhile|"
    r"in (conclusion|summary|short|contrast|other words|general|the end)|to (summarize|sum up|conclude)|"
    r"as (a result|such|mentioned)|for (example|instance)|all in all|by following|with (these|this|that))\b",
    re.IGNORECASE)
_TOPIC_JUNK = re.compile(r"[*_`#\"<>\[\](){}|]")
_DANGLING = {"a", "an", "the", "and", "or", "but", "of", "to", "for", "with", "in", "on", "at", "by", "from", "as",
             "your", "my", "our", "their", "its", "is", "are", "be", "that", "which"}
MAX_TOPIC_WORDS = 5  # a topic is decoded on main's critical path: keep it short
SHORT_TOPIC_WORDS = 3


@dataclass(frozen=True)
class Line:
    start: int  # offset of the line in the text
    end: int  # offset of its newline (or the end of the text)
    text: str
    code: bool  # a fence line or inside a fenced code block

    @property
    def blank(self) -> bool:
        return not self.text.strip()

    @property
    def indent(self) -> int:
        return len(self.text.expandtabs(4)) - len(self.text.expandtabs(4).lstrip())


@dataclass(frozen=True)
class Item:
    key: tuple  # items with the same key, separated only by blank lines, form one list
    first: int  # first line
    last: int  # last non-blank line
    topic: str


def split_lines(text: str) -> list[Line]:
    lines, pos, fence = [], 0, None
    for raw in text.split("\n"):
        m = _FENCE.match(raw)
        code = fence is not None or m is not None
        if m and fence is None:
            fence = m.group(1)
        elif m and raw.strip().startswith(fence):
            fence = None
        lines.append(Line(pos, pos + len(raw), raw, code))
        pos += len(raw) + 1
    return lines


def clean_topic(head: str, fallback: str) -> str:
    head = re.split(r"(?<=[.!?])\s|:|\s[-–—]\s", head, maxsplit=1)[0]
    words = _TOPIC_JUNK.sub(" ", re.sub(r"<[^<>]*>", " ", head)).split()
    if len(words) > MAX_TOPIC_WORDS:
        words = words[:SHORT_TOPIC_WORDS]
    while words and (not words[-1].strip(".,;:!?-–—'") or words[-1].lower() in _DANGLING):
        words.pop()
    topic = " ".join(words).strip(" .,;:!?-–—'")
    return topic if topic and check_topic(topic) is None else fallback


def _numbered(number: str | None, topic: str) -> str:
    """A numbered item's topic carries its number: its thread sees no sibling, so the topic is how it knows
    which number to write (and main, which sees only the topics, counts up instead of repeating one)."""
    return f"{int(number)}. {topic}" if number and not topic.startswith(number) else topic


def _head_topic(head: str, fallback: str) -> str:
    bold = _BOLD.match(head.strip())
    return clean_topic(bold.group("head") if bold else head, fallback)


# -- ways of cutting an answer into items -------------------------------------------------------------

def _next_nonblank(lines: list[Line], i: int) -> int | None:
    while i < len(lines) and lines[i].blank:
        i += 1
    return i if i < len(lines) else None


def _skip_code(lines: list[Line], i: int) -> int:
    """From a fence line at `i`, the index after its closing fence (or the end)."""
    j = i + 1
    while j < len(lines) and lines[j].code and not _FENCE.match(lines[j].text):
        j += 1
    return min(j + 1, len(lines))


def _item_key(line: Line):
    m = None if line.code else _LIST_ITEM.fullmatch(line.text)
    if m:
        return ("list", line.indent, m.group("bullet") or "n"), m
    step = None if line.code else _STEP.fullmatch(line.text)
    return (("step",), step) if step else (None, None)


def _is_header(head: str) -> bool:
    """An item's first line that only names it ("Solar energy:", "**Sleep**"): its body follows."""
    return bool(re.fullmatch(r"\*\*[^*]+\*\*:?|[^.!?:]{1,60}:", head.strip()))


def _starts_block(line: Line) -> bool:
    """A line that starts a list item, a step, a heading or code: never the body of the item above."""
    return _item_key(line)[0] is not None or bool(_HEADING.fullmatch(line.text)) or line.code


def _ends_item(line: Line, indent: int, key: tuple) -> bool:
    """Whether a line right under an item (no blank line between) starts something else: the next item of
    its list, an item of an outer list, a step or a heading."""
    other, _ = _item_key(line)
    return (other is not None and (other == key or other[0] == "step" or line.indent < indent)) \
        or bool(_HEADING.fullmatch(line.text))


def _list_items(lines: list[Line]) -> list[Item]:
    """Numbered items, bullets and "Step N:" lines. Lines right under an item, deeper-indented lines after
    a blank line, code, and the paragraph after an item that is only a header belong to it; the next item
    of its list, or a blank line followed by anything else at its indent or less, ends it."""
    items, i = [], 0
    while i < len(lines):
        key, m = _item_key(lines[i])
        if key is None:
            i += 1
            continue
        indent = lines[i].indent
        j, last = i + 1, i
        while j < len(lines):
            nxt = lines[j]
            if nxt.code and _FENCE.match(nxt.text) and (j == last + 1 or nxt.indent > indent):
                last = _skip_code(lines, j) - 1
                j = last + 1
            elif not nxt.blank and nxt.indent > indent:
                last, j = j, j + 1
            elif nxt.blank:
                k = _next_nonblank(lines, j)
                if k is None or not (lines[k].indent > indent or (last == i and _is_header(m.group("head"))
                                                                  and not _starts_block(lines[k]))):
                    break
                j = k  # "1. Solar energy:" then a blank line, then its paragraph
            elif _ends_item(nxt, indent, key):
                break
            else:  # a lazy continuation line, as Markdown has it: "1. Earth:\nThe only planet with life."
                last, j = j, j + 1
        items.append(Item(key, i, last, _numbered(m.group("number"), _head_topic(m.group("head"),
                                                                                 f"item {len(items) + 1}"))))
        i = last + 1
    return items


def _bold_items(lines: list[Line]) -> list[Item]:
    """Lines that open with a bold phrase; the item runs to the end of its paragraph."""
    items, i = [], 0
    while i < len(lines):
        bold = None if lines[i].code else _BOLD.match(lines[i].text)
        if not bold:
            i += 1
            continue
        last = i
        while last + 1 < len(lines) and not lines[last + 1].blank and not _BOLD.match(lines[last + 1].text):
            last = _skip_code(lines, last + 1) - 1 if _FENCE.match(lines[last + 1].text) else last + 1
        items.append(Item(("bold",), i, last, clean_topic(bold.group("head"), f"item {len(items) + 1}")))
        i = last + 1
    return items


def _sections(lines: list[Line], level: int) -> list[Item]:
    """Markdown sections of one heading level, each up to the next heading of that level or higher."""
    starts = [i for i, ln in enumerate(lines) if not ln.code and (m := _HEADING.fullmatch(ln.text))
              and len(m.group("hashes")) <= level]
    items = []
    for n, i in enumerate(starts):
        m = _HEADING.fullmatch(lines[i].text)
        if len(m.group("hashes")) != level:
            continue
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        last = max(k for k in range(i, end) if not lines[k].blank)
        items.append(Item(("h", level), i, last, _head_topic(m.group("head"), f"part {len(items) + 1}")))
    return items


def _paragraphs(lines: list[Line]) -> list[Item]:
    """Prose paragraphs after the first (an introduction) that do not lean on what came before them;
    lists, headings and code are the other cuttings' business."""
    paras, i = [], _next_nonblank(lines, 0)
    while i is not None:
        last = i
        while last + 1 < len(lines) and (not lines[last + 1].blank or lines[last + 1].code):
            last += 1
        paras.append((i, last))
        i = _next_nonblank(lines, last + 1)
    items = []
    for first, last in paras[1:]:
        text = lines[first].text.strip()
        if (lines[first].code or _LEANS_BACK.match(text) or text.endswith(":") or _LIST_ITEM.fullmatch(text)
                or _STEP.fullmatch(text) or _BOLD.match(text) or _HEADING.fullmatch(text)):
            continue
        items.append(Item(("p",), first, last, clean_topic(text, f"part {len(items) + 1}")))
    return items


def cuttings(lines: list[Line]) -> list[list[Item]]:
    """Every way of cutting the answer this teacher knows, each a list of items in order."""
    levels = sorted({len(m.group("hashes")) for ln in lines if not ln.code and (m := _HEADING.fullmatch(ln.text))})
    found = [_list_items(lines), _bold_items(lines), *(_sections(lines, lv) for lv in levels), _paragraphs(lines)]
    return [items for items in found if items]


def groups(lines: list[Line], items: list[Item]) -> list[list[Item]]:
    """Runs of at least two items of one key separated by nothing but blank lines."""
    runs: list[list[Item]] = []
    for item in items:
        run = runs[-1] if runs else None
        if run and run[-1].key == item.key and _next_nonblank(lines, run[-1].last + 1) == item.first:
            run.append(item)
        else:
            runs.append([item])
    return [run for run in runs if len(run) >= 2]


# -- from items to a stored form ----------------------------------------------------------------------

def _is_lead_in(text: str) -> bool:
    """Short text that only introduces what follows ("Cons:", a heading): main need not wait for it."""
    rows = [r.strip() for r in text.split("\n") if r.strip()]
    if not rows or len(rows) > 2:
        return False
    tail = rows[-1]
    return tail.endswith(":") or bool(_HEADING.fullmatch(tail)) or bool(re.fullmatch(r"\*\*[^*]+\*\*:?", tail))


def _block_topic(items: list[Item]) -> str:
    joined = ", ".join(i.topic for i in items)
    return joined if check_topic(joined) is None and len(joined.split()) <= MAX_TOPIC_WORDS else items[0].topic


def stored_form(text: str, lines: list[Line], runs: list[list[Item]], per_block: int) -> Document:
    """Tags put into `text`: a block holds `per_block` items with the line breaks before them. Not validated:
    the text itself may hold something that reads as a tag next to ours."""
    parts, pos = [], 0
    for n, run in enumerate(runs):
        before = run[0].first - 1
        while before >= 0 and lines[before].blank:  # the blank lines before a list go into its first block
            before -= 1
        start = lines[before].end if before >= 0 else 0
        lead = text[pos:start]
        if n and lead.strip() and not _is_lead_in(lead):
            parts.append(make_sync())
        parts.append(lead)
        for k in range(0, len(run), per_block):
            chunk = run[k:k + per_block]
            end = lines[chunk[-1].last].end
            parts.append(make_block(_block_topic(chunk), 1, text[start:end]))
            start = end
        pos = start
    rest = text[pos:]
    if rest.strip():
        parts.append(make_sync())
    parts.append(rest)
    return make_document(parts)


def best_annotation(text: str, tokenizer, granularity: int = 10, min_blocks: int = 1,
                    max_blocks: int = 12) -> Measured | None:
    """The best-paying structural annotation of `text`, with true promise lengths and its costs; None when no
    cut beats plain decoding."""
    lines = split_lines(text)
    best = None
    for items in cuttings(lines):
        runs = groups(lines, items)
        n_items = sum(len(r) for r in runs)
        if not runs:
            continue
        smallest = max(1, -(-n_items // max_blocks))
        for per_block in range(smallest, smallest + 3):
            blocks = sum(-(-len(r) // per_block) for r in runs)
            if not min_blocks <= blocks <= max_blocks:
                continue
            try:
                doc = parse(render(stored_form(text, lines, runs, per_block)))
            except PastaSyntaxError:
                continue  # the text itself holds something that reads as a tag next to ours
            if doc.stripped != text:
                continue
            kept, _ = measured(doc, tokenizer, granularity)
            speedup = kept.costs.theoretical_speedup
            if speedup > 1.0:  # the fewest items per block that pays: one item, one topic where possible
                if best is None or speedup > best.costs.theoretical_speedup:
                    best = kept
                break
    return best


def annotate(text: str, tokenizer, granularity: int = 10, min_blocks: int = 1, max_blocks: int = 12) -> str:
    """The stored form of `text` with the best-paying structural annotation, or `text` unchanged."""
    best = best_annotation(text, tokenizer, granularity, min_blocks, max_blocks)
    return render(best.doc) if best else text


class StructuralTeacher:
    """The teacher interface over `best_annotation`: a reply per record, no cache needed (it takes milliseconds)."""

    name = TEACHER

    def __init__(self, tokenizer, granularity: int = 10, min_blocks: int = 1, max_blocks: int = 12):
        self.tokenizer, self.granularity, self.min_blocks, self.max_blocks = tokenizer, granularity, min_blocks, \
            max_blocks

    def annotate_all(self, records) -> dict[str, Measured | str]:
        """The best annotation per record id, measured; the answer itself where none pays."""
        from tqdm import tqdm

        out: dict[str, Measured | str] = {}
        for r in tqdm(records, desc="teacher structural", unit="answer", dynamic_ncols=True):
            best = best_annotation(r.answer, self.tokenizer, self.granularity, self.min_blocks, self.max_blocks)
            out[r.id] = best if best is not None else r.answer
        return out

    def record_verdict(self, record, rule: str | None) -> None:
        """Nothing to note: the same answer always gets the same reply."""

    def summary(self) -> dict:
        return {"teacher": TEACHER}

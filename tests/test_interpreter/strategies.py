"""Hypothesis strategies for stored sequences."""

from hypothesis import strategies as st

from interpreter import promise_tag

# Pieces of ordinary text; none ends in a way that could join the next piece into a tag.
WORDS = st.sampled_from([
    "a", "Try", " these", ":", "\n", "1.", " sleep", " é", "🙂", "  ", "\t", "x y",
    " <div>", " a < b", " List<T>", " </p>", " <br/>", " <asynchronous>", " <promises>", " <syncing/>",
    ' "quoted"', " > ", "/>",
])
TEXT = st.lists(WORDS, max_size=6).map("".join)
TOPIC = st.lists(st.sampled_from(["sleep", "water", "step one", "pros", "naïve", "x-y"]), min_size=1,
                 max_size=3).map(" ".join)


@st.composite
def stored_sequences(draw, max_items=6):
    """A random well-formed stored sequence and its structure: [("text", s) | ("block", topic, n, s) | ("sync",)]."""
    items = []
    for _ in range(draw(st.integers(0, max_items))):
        kind = draw(st.sampled_from(["text", "block", "block", "sync"]))
        if kind == "text":
            items.append(("text", draw(TEXT)))
        elif kind == "block":
            items.append(("block", draw(TOPIC), draw(st.integers(1, 30)), draw(TEXT)))
        else:
            items.append(("sync",))
    return spell(items), items


def spell(items) -> str:
    """The stored text of `items`, tags written out here: an oracle apart from interpreter.render."""
    out = []
    for item in items:
        if item[0] == "text":
            out.append(item[1])
        elif item[0] == "block":
            out.append(f"{promise_tag(item[1], item[2])}<async>{item[3]}</async>")
        else:
            out.append("<sync/>")
    return "".join(out)


@st.composite
def splits(draw, text: str):
    """`text` cut at random places into pieces (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def mutated(draw):
    """A stored sequence with random edits: often invalid, sometimes still valid."""
    text, _ = draw(stored_sequences())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete"]))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(["<", ">", "/", '"', "<async>", "</async>", "<sync/>",
                                                     "<sync>", promise_tag("t", 2), "x", "\n"])) + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 5)):]
    return text

"""Property tests: round trips, streaming == batch, and no crash on any text."""

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import mutated, spell, splits, stored_sequences

from interpreter import PastaSyntaxError, StreamParser, make_block, make_document, make_sync, parse, render, strip
from interpreter.parser import Block, MainText, Sync, events_to_document


def _structure(doc):
    out = []
    for seg in doc.segments:
        if isinstance(seg, MainText):
            out.append(("text", seg.text))
        elif isinstance(seg, Block):
            out.append(("block", seg.promise.topic, seg.promise.tokens, seg.text))
        else:
            assert isinstance(seg, Sync)
            out.append(("sync",))
    return out


def _merge_texts(items):
    out = []
    for item in items:
        if item[0] == "text" and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + item[1])
        elif item != ("text", ""):
            out.append(item)
    return out


@settings(max_examples=300, deadline=None)
@given(stored_sequences())
def test_well_formed_round_trips(case):
    text, items = case
    doc = parse(text)
    assert _structure(doc) == _merge_texts(items)
    assert spell(_structure(doc)) == text
    expected = "".join(i[1] if i[0] == "text" else i[3] if i[0] == "block" else "" for i in items)
    assert strip(text) == expected


@settings(max_examples=300, deadline=None)
@given(stored_sequences())
def test_render_round_trips(case):
    text, items = case
    doc = parse(text)
    assert render(doc) == text
    built = make_document(i[1] if i[0] == "text" else make_block(*i[1:]) if i[0] == "block" else make_sync()
                          for i in items)
    assert built == doc and parse(render(built)) == built


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_render_gives_back_any_valid_text_byte_for_byte(text):
    try:
        doc = parse(text)
    except PastaSyntaxError:
        return
    assert render(doc) == text and parse(render(doc)) == doc


def _stream(pieces):
    parser, events = StreamParser(), []
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.close()
    except PastaSyntaxError as err:
        return ("error", err.rule, err.offset, err.line, err.column)
    return events_to_document("".join(pieces), events)


def _batch(text):
    try:
        return parse(text)
    except PastaSyntaxError as err:
        return ("error", err.rule, err.offset, err.line, err.column)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_streaming_equals_batch_on_valid_input(data):
    text, _ = data.draw(stored_sequences())
    assert _stream(data.draw(splits(text))) == _batch(text)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_streaming_equals_batch_on_edited_input(data):
    text = data.draw(mutated())
    assert _stream(data.draw(splits(text))) == _batch(text)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_text_parses_or_fails_clearly(text):
    try:
        doc = parse(text)
    except PastaSyntaxError as err:
        assert err.line >= 1 and err.column >= 1 and err.message
        assert 0 <= err.offset <= len(text)
    else:
        assert len(doc.stripped) <= len(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="<>/\"= apromiseyncto1\n", max_size=60))
def test_tag_like_noise_parses_or_fails_clearly(text):
    test_any_text_parses_or_fails_clearly.hypothesis.inner_test(text)

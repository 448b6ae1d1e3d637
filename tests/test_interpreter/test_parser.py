"""Every rule of PASTA-LANG.md, and the message a user gets when one is broken."""

import pytest

from interpreter import PastaSyntaxError, make_block, make_document, make_sync, parse, render, strip, validate
from interpreter.parser import MainText

P = '<promise topic="a" tokens="3"/>'
SPEC_EXAMPLE = (
    'Try these:<promise topic="sleep" tokens="20"/><async>\n1. Sleep eight hours ...</async>'
    '<promise topic="water" tokens="20"/><async>\n2. Drink water ...</async><sync/>\nTogether they add up.'
)


def test_spec_example_structure_and_strip():
    doc = parse(SPEC_EXAMPLE)
    assert [(p.topic, p.tokens) for p in doc.promises] == [("sleep", 20), ("water", 20)]
    assert [b.text for b in doc.blocks] == ["\n1. Sleep eight hours ...", "\n2. Drink water ..."]
    assert len(doc.syncs) == 1
    assert doc.main_text == "Try these:\nTogether they add up."
    assert strip(SPEC_EXAMPLE) == "Try these:\n1. Sleep eight hours ...\n2. Drink water ...\nTogether they add up."


@pytest.mark.parametrize("text", [
    "plain text, no tags at all",
    "",
    "HTML stays text: <div class='x'>a < b</div>, <br/>, List<T> and </p>",
    "<promises> <asynchronous> <syncing/> <Promise> <SYNC/> are not tags",
    f"{P}<async></async>",  # an empty block is allowed
    'x<promise topic="a"  tokens="3" /><async>y</async><sync />',  # spaces inside tags are tolerated
    '<promise tokens="3" topic="eight words is the most we allow"/><async>z</async>',
])
def test_valid(text):
    doc = parse(text)
    assert isinstance(strip(text), str)
    assert doc.text == text
    assert render(doc) == text  # tags as written, byte for byte
    assert parse(render(doc)) == doc


def test_a_built_document_is_what_parse_gives_for_its_render():
    doc = make_document(["", "Tips:", MainText(" ", 0), make_block("sleep", 20, "\n1. Sleep"),
                         make_block("water", 7, "", '<promise topic="water"  tokens="7" />'), make_sync(), "",
                         "\nDone.", make_sync("<sync />")])
    assert render(doc) == ('Tips: <promise topic="sleep" tokens="20"/><async>\n1. Sleep</async>'
                           '<promise topic="water"  tokens="7" /><async></async><sync/>\nDone.<sync />')
    assert parse(render(doc)) == doc  # texts joined, empty ones dropped, offsets where parse puts them
    assert make_document([]) == parse("")


@pytest.mark.parametrize("text, rule, where", [
    (f"a{P}b", "promise-without-block", (1, 2)),
    (f"a{P}", "promise-without-block", (1, 2)),
    (f"{P} <async>x</async>", "promise-without-block", (1, 1)),
    ("<async>x</async>", "block-without-promise", (1, 1)),
    (f"{P}<async>x</async><async>y</async>", "block-without-promise", (1, 48)),
    ("x\n</async>", "stray-close", (2, 1)),
    (f"{P}<async>open", "unclosed-block", (1, 32)),
    (f"{P}<async>a{P}<async>b</async></async>", "nesting", (1, 40)),
    (f"{P}<async>a<sync/></async>", "nesting", (1, 40)),
    (f"{P}<async>a<async></async>", "nesting", (1, 40)),
    ("a\n b<sync>", "sync-not-self-closing", (2, 3)),
    ("</sync>", "closing-sync", (1, 1)),
    ('<sync x="1"/>', "malformed-sync", (1, 1)),
    ("</promise>", "closing-promise", (1, 1)),
    ('<promise topic="a" tokens="3">', "promise-not-self-closing", (1, 1)),
    (f"{P}<async/>", "self-closing-async", (1, 32)),
    (f'{P}<async id="1">x</async>', "malformed-async", (1, 32)),
    (f"{P}<async>x</async >", "malformed-async", (1, 40)),
    ('<promise topic="a"/>', "missing-attribute", (1, 1)),
    ('<promise tokens="3"/>', "missing-attribute", (1, 1)),
    ('<promise topic="a" tokens="3" id="q"/>', "unknown-attribute", (1, 1)),
    ('<promise topic="a" topic="b" tokens="3"/>', "duplicate-attribute", (1, 1)),
    ('<promise topic=sleep tokens="3"/>', "unquoted-value", (1, 1)),
    ('<promise topic="a" tokens=3/>', "unquoted-value", (1, 1)),
    ('<promise topic="a"tokens="3"/>', "malformed-attributes", (1, 1)),
    ('<promise topic="" tokens="3"/>', "bad-topic", (1, 1)),
    ('<promise topic="one two three four five six seven eight nine" tokens="3"/>', "bad-topic", (1, 1)),
    ('<promise topic="a <b" tokens="3"/>', "bad-topic", (1, 1)),
    ('<promise topic="a" tokens="0"/>', "bad-tokens", (1, 1)),
    ('<promise topic="a" tokens="-2"/>', "bad-tokens", (1, 1)),
    ('<promise topic="a" tokens="1.5"/>', "bad-tokens", (1, 1)),
    ('ok\n\n  <promise topic="never ends', "unterminated-tag", (3, 3)),
])
def test_invalid_names_rule_and_place(text, rule, where):
    with pytest.raises(PastaSyntaxError) as info:
        parse(text)
    err = info.value
    assert err.rule == rule
    assert (err.line, err.column) == where
    assert str(err).startswith(f"{where[0]}:{where[1]}: ")
    assert validate(text).rule == rule


def test_topic_with_gt_is_reported_as_bad_attributes_not_swallowed():
    # a `>` inside a value ends the tag early: still an error, never a silent tag
    assert validate('<promise topic="a > b" tokens="3"/><async>x</async>') is not None


def test_overlong_tag_is_cut_at_a_bound():
    text = "<promise " + "x" * 1000
    err = validate(text)
    assert err.rule == "unterminated-tag"

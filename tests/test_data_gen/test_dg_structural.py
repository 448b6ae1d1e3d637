"""The structural teacher: what it forks, where tags go, and that strip() gives back every byte."""

from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import bpe_tokenizer

from data_gen.promises import round_up
from data_gen.structural import annotate, best_annotation, clean_topic
from interpreter import block_lengths, measure, parse, render, strip, validate
from interpreter.parser import Block, MainText, Sync
from interpreter.tags import check_topic

LONG = "the quick brown fox jumps over the lazy dog and walks every day to read a book"


def run(text, **kw):
    out = annotate(text, bpe_tokenizer(), **kw)
    assert validate(out) is None and strip(out) == text
    return out, parse(out)


def shape(doc):
    """The stored form as a list: "main", "block" and "sync" in order."""
    return [{MainText: "main", Block: "block", Sync: "sync"}[type(s)] for s in doc.segments]


def test_a_numbered_list_forks_its_items_and_syncs_before_the_conclusion():
    text = f"Try these:\n\n1. **Sleep**: {LONG}.\n2. **Water**: {LONG}.\n3. **Walk**: {LONG}.\n\nTogether they help."
    out, doc = run(text)
    assert shape(doc) == ["main", "block", "block", "block", "sync", "main"]
    assert doc.segments[0].text == "Try these:"
    assert [b.text.split(":")[0] for b in doc.blocks] == ["\n\n1. **Sleep**", "\n2. **Water**", "\n3. **Walk**"]
    assert [p.topic for p in doc.promises] == ["1. Sleep", "2. Water", "3. Walk"]  # numbered items carry their number
    assert doc.segments[-1].text == "\n\nTogether they help."


def test_sub_items_and_code_under_an_item_stay_in_its_block():
    text = (f"Tips:\n- Sleep: {LONG}.\n  - in a dark room\n  - at the same hour\n- Water: {LONG}.\n```\ndrink()\n```\n"
            f"- Walk: {LONG}.\n\n    every day\n\nDone.")
    _, doc = run(text)
    assert [b.text for b in doc.blocks] == [f"\n- Sleep: {LONG}.\n  - in a dark room\n  - at the same hour",
                                            f"\n- Water: {LONG}.\n```\ndrink()\n```",
                                            f"\n- Walk: {LONG}.\n\n    every day"]


def test_header_items_keep_the_lines_and_the_paragraph_under_them():
    text = (f"Sources:\n\n1. Solar energy:\n\n{LONG}.\n\n2. **Wind**\n{LONG}.\n\n3. Water power:\n\n{LONG}.\n\n"
            "That is all.")
    _, doc = run(text)
    assert [p.topic for p in doc.promises] == ["1. Solar energy", "2. Wind", "3. Water power"]
    assert doc.blocks[0].text == f"\n\n1. Solar energy:\n\n{LONG}."
    assert doc.blocks[1].text == f"\n\n2. **Wind**\n{LONG}."
    assert doc.syncs and doc.segments[-1].text == "\n\nThat is all."


def test_tokens_are_the_true_block_lengths_rounded_up_to_the_granularity():
    text = f"Try:\n- {LONG}\n- {LONG} twice\n- {LONG} three times"
    for granularity in (1, 10):
        _, doc = run(text, granularity=granularity)
        true = block_lengths(doc, bpe_tokenizer())
        assert [p.tokens for p in doc.promises] == [round_up(n, granularity) for n in true]


def test_a_lead_in_between_two_lists_does_not_wait_for_the_first_list():
    text = (f"Pros:\n- Cheap: {LONG}.\n- Quick: {LONG}.\n\nCons:\n- Noisy: {LONG}.\n- Fragile: {LONG}.\n\n"
            "Overall it depends.")
    _, doc = run(text)
    assert shape(doc) == ["main", "block", "block", "main", "block", "block", "sync", "main"]
    assert doc.segments[3].text == "\n\nCons:"
    assert [p.topic for p in doc.promises] == ["Cheap", "Quick", "Noisy", "Fragile"]


def test_sections_under_headings_become_blocks():
    text = f"Two options.\n\n## Kayak\n{LONG}.\n\n{LONG}.\n\n## Canoe\n{LONG}.\n\nIn short, pick one."
    _, doc = run(text)
    assert [p.topic for p in doc.promises] == ["Kayak", "Canoe"]
    assert doc.blocks[0].text.startswith("\n\n## Kayak") and doc.blocks[1].text.startswith("\n\n## Canoe")


def test_independent_paragraphs_fork_but_those_that_lean_back_do_not():
    text = (f"Cities run hot.\n\nDark roofs soak up sun, {LONG}, {LONG}.\n\nFew trees give shade, {LONG}, {LONG}."
            "\n\nHowever, engines add heat.\n\nSo cities stay warm.")
    _, doc = run(text)
    assert [b.text.split(",")[0] for b in doc.blocks] == ["\n\nDark roofs soak up sun", "\n\nFew trees give shade"]
    assert doc.segments[3] == doc.syncs[0]  # "However ..." waits for both


def test_list_lines_inside_code_are_left_alone():
    text = f"Run this:\n\n```yaml\n- name: a\n- name: b\n- name: c\n```\n\nThen {LONG}."
    out, doc = run(text)
    assert out == text and doc.blocks == []


def test_short_items_do_not_pay_for_their_tags_and_stay_plain():
    text = "Colors:\n- red\n- blue\n- green"
    assert run(text)[0] == text


def test_a_long_list_is_grouped_to_respect_max_blocks():
    text = "Steps:\n" + "\n".join(f"{i}. Step {i}: {LONG}." for i in range(1, 21))
    _, doc = run(text, max_blocks=5)
    assert 2 <= len(doc.blocks) <= 5
    _, doc = run(text, min_blocks=25)
    assert doc.blocks == []


def test_forking_pays_off_in_theoretical_speedup():
    text = f"Try these:\n1. Sleep: {LONG}.\n2. Water: {LONG}.\n3. Walk: {LONG}.\n4. Read: {LONG}."
    out, _ = run(text)
    assert measure(out, bpe_tokenizer()).theoretical_speedup > 1.15  # numbered topics cost a few tokens


def test_the_teacher_hands_on_its_annotation_measured():
    text = f"Try these:\n1. Sleep: {LONG}.\n2. Water: {LONG}.\n3. Walk: {LONG}.\n\nDone."
    tok = bpe_tokenizer()
    best = best_annotation(text, tok)
    assert render(best.doc) == annotate(text, tok) and parse(render(best.doc)) == best.doc
    assert best.costs == measure(render(best.doc), tok)  # what the row keeps, measured once
    assert [p.tokens for p in best.doc.promises] == [round_up(n, 10) for n in block_lengths(best.doc, tok)]
    assert best_annotation("One short line.", tok) is None


def test_windows_line_ends_and_trailing_whitespace_survive():
    text = f"Try:\r\n- Sleep: {LONG}.\r\n- Water: {LONG}.\r\n\r\nDone.\r\n"
    run(text)


def test_topics_come_from_the_item_head_and_obey_the_topic_rules():
    assert clean_topic("**Preheat the oven**: heat it to 220C", "x") == "Preheat the oven"
    assert clean_topic('Use "quotes" <b>bold</b>: then', "x") == "Use quotes bold"
    assert clean_topic("Avoid heavy meals and caffeine close to bedtime every night", "x") == "Avoid heavy meals"
    assert clean_topic("Keep the room dark and quiet at night", "x") == "Keep the room"
    assert clean_topic("***", "item 3") == "item 3"


LINE = st.sampled_from(["", "Intro text:", "1. first item with words", "2. second item here", "- bullet point text",
                        "  - nested bullet", "**Bold**: with a tail", "## Heading", "```", "    indented code",
                        "Plain paragraph line.", "However, this leans back.", "Step 1: do a thing", "a < b and <div>",
                        "x" * 30, "Finally:", "\t", " "])


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, max_size=14), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_any_text_comes_back_byte_for_byte(lines, newline, trailing):
    text = newline.join(lines) + (newline if trailing else "")
    out = annotate(text, bpe_tokenizer(), granularity=1, max_blocks=4)
    assert validate(out) is None and strip(out) == text
    doc = parse(out)
    assert len(doc.blocks) <= 4 and all(check_topic(p.topic) is None for p in doc.promises)
    assert all(b.text.strip() for b in doc.blocks)

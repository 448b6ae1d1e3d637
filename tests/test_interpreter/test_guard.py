"""The tag guard: a model that starts writing an invalid tag is steered to a valid answer, and a
model that writes valid tags gets exactly its own answer."""

import pytest
import torch
from tiny import bpe_tokenizer, tag_token_tokenizer, tiny_model

from interpreter import Engine, Options, encode, parse, turn_end_id
from interpreter.detok import Detokenizer
from interpreter.guard import TOKENS_DIGITS, TOPIC_WORDS, TagGuard
from interpreter.request import Thread
from interpreter.sampling import Sampler
from interpreter.tags import BLOCK_TAGS, MAIN_TAGS, may_take

P = '<promise topic="{}" tokens="5"/>'


@pytest.mark.parametrize("pending, piece, kinds, ok", [
    ("", "plain text", MAIN_TAGS, True),
    ("", "<div>a < b</div> List<T>", MAIN_TAGS, True),  # not Pasta-Lang: ordinary text
    ("", "<div>a < b</div>", BLOCK_TAGS, True),
    ("<", "asy", BLOCK_TAGS, True),  # may still become <asyncio>
    ("</", "promise", MAIN_TAGS, False),  # there is no </promise>
    ("", '<promise topic="a" tokens="5"/>', MAIN_TAGS, True),
    ('<promise topic="a b c d e f g h', " i", MAIN_TAGS, False),  # a ninth topic word
    ('<promise topic="a b c d e f g h', '"', MAIN_TAGS, True),
    ('<promise topic="1.', " **", MAIN_TAGS, False),  # the answer's markdown, not a topic
    ('<promise topic="1.', "\n", MAIN_TAGS, False),  # a topic is one line
    ('<promise topic="1.', " Pack", MAIN_TAGS, True),
    ('<promise topic="1.', "1", MAIN_TAGS, False),  # a list number runs on as 1.1.1.1..., not a topic
    ('<promise topic="1. 3', "x", MAIN_TAGS, True),
    ('<promise topic="a" tokens="5"', ">", MAIN_TAGS, False),  # not self-closing
    ('<promise topic="a"', "\n\n", MAIN_TAGS, False),  # a tag is one line
    ('<promise topic="a"', "\ttokens", MAIN_TAGS, False),
    ('<promise topic="a" tokens="5"', " />", MAIN_TAGS, True),
    ('<promise topic="a" tokens="', "0", MAIN_TAGS, False),
    ("", "<sync/>", MAIN_TAGS, True),
    ("", "</async>", MAIN_TAGS, False),  # only a block closes
    ("", "</async>", BLOCK_TAGS, True),
    ("<", "promise", BLOCK_TAGS, False),  # no nesting
    ("", "<sync/>", BLOCK_TAGS, False),
    ("<promise", "s", BLOCK_TAGS, False),  # a look-alike is taken for the tag it imitates
    ("<promise", "s", MAIN_TAGS, False),
    ("<prom", "ize", MAIN_TAGS, False),
    ("<", "prom", MAIN_TAGS, True),  # may still become <promise
    ("<", "prom", BLOCK_TAGS, False),  # could only become a promise or a look-alike
    ("<", "pre>", BLOCK_TAGS, True),
    ("<", "asy", MAIN_TAGS, True),
    ("<", "async", MAIN_TAGS, False),  # only the engine opens a block
    ("", "< promise", BLOCK_TAGS, True),
])
def test_may_take(pending, piece, kinds, ok):
    assert may_take(pending, piece, kinds) is ok


def test_may_not_end_in_the_middle_of_a_tag():
    assert not may_take('<promise topic="x', "", MAIN_TAGS, end=True)
    assert may_take("<sy", "", MAIN_TAGS, end=True)  # ends as the text "<sy"


def test_peek_is_push_without_taking():
    tok = bpe_tokenizer()
    d = Detokenizer(tok)
    for t in tok("Héllo — <promise topic=\"x\"/> ünïcode ✓")["input_ids"]:
        seen = d.peek(t)
        assert d.push(t) == seen


class Wishful(Sampler):
    """A model that writes a script, one token per draw; a token the guard masks is skipped (the
    model's next best is the rest of its script) and past the end it draws the end token."""

    def __init__(self, tokenizer, main: str, blocks=(), block_ends=False):
        super().__init__(Options(), "cpu")
        end = turn_end_id(tokenizer)
        self.end = end
        self.wants = {0: encode(tokenizer, main)}
        for i, b in enumerate(blocks):  # block_ends: each block first tries to end the answer, then closes
            self.wants[i + 1] = encode(tokenizer, b) + ([end, *encode(tokenizer, "</async>")] if block_ends else [])
        self.at = dict.fromkeys(self.wants, 0)

    def draw(self, rows, threads):
        out = []
        for row, th in zip(rows, threads):
            want, at = self.wants.get(th.tid, []), self.at.get(th.tid, 0)
            self.at[th.tid] = at + 1
            token = want[at] if at < len(want) else self.end
            out.append(token if row[token] > float("-inf") else int(row.argmax()))
        return out


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


def wish(engine, main: str, blocks=(), block_ends=False, **options):
    source = Wishful(engine.tokenizer, main, blocks, block_ends)
    result = engine.generate(engine.prompt_ids("Q"), source=source, options=Options(**options))
    assert parse(result.stored).stripped == result.text
    return result


def test_broken_tags_in_main_are_steered_not_repaired(engine):
    main = f'A</promise>B{P.format("a b c d e f g h i j")}C<sync/>'  # a closing promise, ten topic words
    unguarded = wish(engine, main, ["x</async>"], guard_tags=False)
    assert len(unguarded.repairs) == 2 and unguarded.threads == 0
    r = wish(engine, main, ["x</async>"])
    assert r.repairs == [] and r.steered >= 2 and r.threads == 1
    assert parse(r.stored).blocks[0].promise.topic.split() == list("abcdefgh")[:TOPIC_WORDS]


def test_a_topic_that_will_not_end_is_closed_with_the_likeliest_closing_piece(engine):
    """A half-trained student opens a promise and writes its topic on and on: when the redraws find nothing
    valid, the guard takes the likeliest token that writes a tag's fixed pieces, so the tag is finished."""
    tok = engine.tokenizer
    guard = TagGuard(tok, engine.end_ids, tries=4)
    main = Thread(0, Detokenizer(tok))
    main.lexer.feed('<promise topic="' + " ".join("abcdefgh"[:TOPIC_WORDS]))  # one more word breaks the rule
    spaced = [i for i in range(len(tok)) if tok.decode([i]).startswith(" ") and tok.decode([i]).strip()]
    row = torch.full((len(tok),), -10.0)
    row[spaced[:8]] = 5.0  # the model's favourites all start a new word
    quote = encode(tok, '"')[0]
    row[quote] = -5.0
    assert [t for t in spaced[:8] if guard.allows(main, t)] == []
    assert guard.choose(row, main, spaced[0], Sampler(Options(), "cpu")) == (quote, True)


def test_a_promised_length_is_held_to_three_digits(engine):
    """A student wrote `tokens="7000"`: main's next position jumps by the promised length, past what the model
    knows. The guard takes no digit past the third and closes the tag instead."""
    tok = engine.tokenizer
    guard = TagGuard(tok, engine.end_ids, tries=4)
    main = Thread(0, Detokenizer(tok))
    main.lexer.feed('<promise topic="a" tokens="' + "7" * (TOKENS_DIGITS - 1))
    zero = encode(tok, "0")[0]
    assert guard.allows(main, zero)
    main.lexer.feed("0")
    assert not guard.allows(main, zero)
    row = torch.full((len(tok),), -10.0)
    row[zero] = 5.0
    chosen, steered = guard.choose(row, main, zero, Sampler(Options(), "cpu"))
    assert steered and tok.decode([chosen]).startswith('"')  # the tag's closing quote


def test_a_block_cannot_nest_or_end_the_answer(engine):
    main, block = f"A{P.format('x')}<sync/>C", f"y{P.format('z')}w"
    unguarded = wish(engine, main, [block], block_ends=True, guard_tags=False)
    assert any("no nesting" in x for x in unguarded.repairs)
    assert any("ended the answer" in x for x in unguarded.repairs)
    r = wish(engine, main, [block], block_ends=True)
    assert r.repairs == [] and r.steered >= 2 and r.text.startswith("Ay") and r.text.endswith("wC")


def test_valid_tags_are_left_alone(engine):
    main = f"Try:{P.format('a')}{P.format('b')}<sync/>Done. a < b, <div>"
    blocks = ["1. x</async>", "2. y</async>"]
    r = wish(engine, main, blocks)
    assert r.steered == 0 and r.repairs == [] and r.threads == 2
    assert r.stored == wish(engine, main, blocks, guard_tags=False).stored


def test_sequential_mode_is_never_guarded(engine):
    r = engine.generate(engine.prompt_ids("Q"), mode="sequential", source=Wishful(engine.tokenizer, "A</async>B"))
    assert r.text == "A</async>B" and r.steered == 0


def test_a_promise_piece_as_added_token_stays_inside_a_promise():
    """A tag-token student writes `Research" tokens="30"/>` in a block now and then: the added token
    `" tokens="` is taken only inside a promise tag, where it still closes the topic."""
    tok = tag_token_tokenizer()  # a copy: bpe_tokenizer() is shared by every test
    tagged = Engine(tiny_model("llama", len(tok)), tok)
    main, block = f'A{P.format("x")}<sync/>B" tokens="C', 'y" tokens="5"/>w</async>'
    unguarded = wish(tagged, main, [block], guard_tags=False)
    assert unguarded.text.count('" tokens="') == 2
    r = wish(tagged, main, [block])
    assert '" tokens="' not in r.text and r.text.startswith("Ay5")
    assert r.threads == 1 and r.repairs == [] and r.steered >= 2


def test_a_length_piece_as_added_token_stays_inside_a_promise():
    """`" tokens="40"/>` is one added token: inside a promise it closes the tag in one step, in a block's text it
    would leak the tag's form (`4. Pack a mix" tokens="70"/>`), so the guard masks it there."""
    tok = tag_token_tokenizer()
    tagged = Engine(tiny_model("llama", len(tok)), tok)
    main, block = 'A<promise topic="x" tokens="40"/>B<sync/>', 'y" tokens="40"/>w</async>'
    assert '" tokens="40"/>' in tok.convert_ids_to_tokens(encode(tok, main))
    unguarded = wish(tagged, main, [block], guard_tags=False)
    assert unguarded.text.count('" tokens="40"/>') == 1
    r = wish(tagged, main, [block])
    assert r.threads == 1 and r.repairs == [] and r.steered >= 1
    assert '"/>' not in r.text and "yw" in r.text and parse(r.stored).blocks[0].promise.tokens == 40


@pytest.mark.parametrize("main, plain, topic", [
    # the ordinary token `="` closed the topic (`topic="8. Arrive="50"/>`): the added `" tokens="` no longer fits,
    # and the guard writes the rest of it as text
    ('A<promise topic="x="50"/>B<sync/>', '="', "x="),
    # plain quotes and line breaks between the parts, a tag that never ends: kept on one line, closed with `/>`
    ('A<promise topic="3. Add"\n\n tokens="3"\n\n3. B<sync/>', '"', "3. Add"),
])
def test_a_promise_a_tag_token_student_breaks_is_finished(main, plain, topic):
    """Tags a tag-token student wrote that the language cannot read: unguarded they are dropped as repairs,
    guarded the promise is finished and forks."""
    tok = tag_token_tokenizer()
    tagged = Engine(tiny_model("llama", len(tok)), tok)
    assert plain in [tok.decode([t]) for t in encode(tok, main)]  # a plain quote, not a tag piece
    unguarded = wish(tagged, main, ["y</async>"], guard_tags=False)
    assert unguarded.threads == 0 and any("malformed" in x for x in unguarded.repairs)
    r = wish(tagged, main, ["y</async>"])
    assert r.threads == 1 and r.repairs == [] and r.steered >= 1
    assert parse(r.stored).blocks[0].promise.topic == topic


def test_a_length_closed_by_a_plain_quote_is_finished_with_its_close():
    """After `tokens="3"` written with a plain quote the added token `"/>` no longer fits: a student that wandered
    on there (`"\n\n3.`) is given the rest of the tag as text."""
    tok = tag_token_tokenizer()
    guard = TagGuard(tok, {turn_end_id(tok)}, tries=4)
    main = Thread(0, Detokenizer(tok))
    main.lexer.feed('<promise topic="3. Add" tokens="3"')
    newline = encode(tok, "\n\n")[0]
    row = torch.full((len(tok),), -10.0)
    row[newline] = 5.0
    chosen, steered = guard.choose(row, main, newline, Sampler(Options(), "cpu"))
    assert steered and "/>".startswith(tok.decode([chosen]))


def test_main_syncs_only_while_a_block_is_unsynced():
    """A half-trained student wrote `<sync/>` 310 times at the end of an answer: a sync with nothing to wait for is
    valid, but a step on the critical path each time, so the guard takes a sync only after a promise."""
    tok = tag_token_tokenizer()
    tagged = Engine(tiny_model("llama", len(tok)), tok)
    main = 'A<sync/>B<promise topic="a" tokens="10"/>C<sync/><sync/><sync/>D'
    unguarded = wish(tagged, main, ["x</async>"], guard_tags=False)
    assert unguarded.stored.count("<sync/>") == 4
    r = wish(tagged, main, ["x</async>"])
    assert r.stored.count("<sync/>") == 1 and r.threads == 1 and r.repairs == [] and r.steered >= 2
    assert r.stored.startswith("AB<promise") and "C<sync/>" in r.stored


def test_a_promise_the_budget_cannot_hold_is_not_begun(engine):
    """A student that sees its list only as topics promised 8 to 11 items of 50 tokens in a 384-token budget,
    and the blocks were cut: once what the blocks still owe leaves less room than the last promise's N, main
    writes no further promise, and the answer ends inside its budget."""
    main = "Try:" + "".join(f'<promise topic="{t}" tokens="40"/>' for t in "abc") + "<sync/>Done."
    blocks = [f"{i}." + " x" * 19 + "</async>" for i in (1, 2, 3)]
    unguarded = wish(engine, main, blocks, guard_tags=False, max_new_tokens=140)
    assert unguarded.threads == 3 and unguarded.finish_reason == "length"
    r = wish(engine, main, blocks, max_new_tokens=140)
    assert r.threads == 2 and r.finish_reason == "stop" and r.repairs == [] and r.text.endswith("Done.")
    assert wish(engine, main, blocks, max_new_tokens=400).threads == 3  # room for all three


def test_a_block_of_sentences_far_past_its_promise_ends_at_its_next_sentence_end(engine):
    """The demo's student wrote blocks as one paragraph, twice their promise of 20 tokens and no line break, and the
    budget cut the answer's last blocks: past 1.5 times its promise a block ends after its next sentence (a list
    number's `2.` is no sentence end)."""
    main = 'Try:<promise topic="a" tokens="10"/><sync/>Done.'
    block = "Go on in 2. " + " ".join(["Walk on and on."] * 20) + "</async>"
    unguarded = wish(engine, main, [block], guard_tags=False, max_new_tokens=100)
    assert unguarded.finish_reason == "length" and not unguarded.text.endswith("Done.")
    r = wish(engine, main, [block], max_new_tokens=100)
    assert r.finish_reason == "stop" and r.repairs == [] and r.text.endswith("Done.")
    kept = parse(r.stored).blocks[0].text
    assert kept.endswith("on.") and block.startswith(kept) and 15 <= len(encode(engine.tokenizer, kept)) < 25


def test_no_promise_is_begun_past_max_promises(engine):
    """Given a budget of 512 tokens, the demo's student forked 10 and 11 ways where no training answer holds more
    than 8 blocks: with `max_promises` reached, main writes text where it would have begun another promise
    (unguarded, the promise is dropped and counted as a repair)."""
    main = "Try:" + "".join(f'<promise topic="{t}" tokens="5"/>' for t in "abcd") + "<sync/>Done."
    blocks = [f"{i}.</async>" for i in range(1, 5)]
    unguarded = wish(engine, main, blocks, guard_tags=False, max_promises=2)
    assert unguarded.threads == 2 and sum("dropped promise" in x for x in unguarded.repairs) == 2
    r = wish(engine, main, blocks, max_promises=2)
    assert r.threads == 2 and r.repairs == [] and r.steered > 0 and r.text.endswith("Done.")
    assert r.stored.count("<promise") == 2
    assert wish(engine, main, blocks).threads == 4  # the default leaves them all
    never = wish(engine, main, blocks, max_promises=0)  # none at all, the first included
    assert never.threads == 0 and never.repairs == [] and "<promise" not in never.stored


def test_a_block_far_past_its_promise_ends_at_its_next_line_break(engine):
    """A student's block that promised 40 tokens ran to 131 (`2. Carry a "70"/> 3. Carry a "80"/> …`) and spent the
    budget: past 1.5 times its promise a block ends at its next line break, and what main writes after its sync
    stays in the answer."""
    main = 'Try:<promise topic="a" tokens="10"/><sync/>Done.'
    block = "".join(f"{i}. go on\n" for i in range(1, 30)) + "</async>"
    unguarded = wish(engine, main, [block], guard_tags=False, max_new_tokens=120)
    assert unguarded.finish_reason == "length" and not unguarded.text.endswith("Done.")
    r = wish(engine, main, [block], max_new_tokens=120)
    assert r.finish_reason == "stop" and r.repairs == [] and r.text.endswith("Done.")
    kept = parse(r.stored).blocks[0].text
    assert kept.endswith("\n") and block.startswith(kept) and 15 <= len(encode(engine.tokenizer, kept)) < 25
    assert wish(engine, main, ["1. go on\n2. go on</async>"]).stored == wish(  # within its promise: left alone
        engine, main, ["1. go on\n2. go on</async>"], guard_tags=False).stored


def test_blocks_end_at_a_sentence_end_when_the_budget_runs_short(engine):
    """The demo's student promised eight items of 20 to 30 tokens, its blocks ran past them, and max_new_tokens cut
    three blocks mid-sentence in the middle of the answer: once the budget runs short the running blocks end at
    their next sentence end, main's close stays, and each such block is counted as a repair."""
    main = 'Try:<promise topic="a" tokens="40"/><promise topic="b" tokens="40"/><sync/>Done.'
    block = " ".join(["Walk on and on."] * 30) + "</async>"
    unguarded = wish(engine, main, [block, block], guard_tags=False, max_new_tokens=150)
    assert unguarded.finish_reason == "length" and not unguarded.text.endswith("Done.")
    r = wish(engine, main, [block, block], max_new_tokens=150)
    assert r.finish_reason == "stop" and r.text.endswith("Done.") and r.tokens <= 150
    assert len(r.repairs) == 2 and all("budget running short" in x for x in r.repairs)
    for kept in (b.text for b in parse(r.stored).blocks):
        assert kept.endswith("on.") and block.startswith(kept)
    roomy = wish(engine, main, [block, block], max_new_tokens=1000)  # past 1.5 times its promise: no repair
    assert roomy.finish_reason == "stop" and roomy.repairs == []

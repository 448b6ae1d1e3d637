"""Every filter rule with bad annotations, and the fixes that keep an example."""

import pytest
from tiny import WordTokenizer, bpe_tokenizer

from data_gen import writer
from data_gen.answers import trim_cut_answer
from data_gen.filters import check_answer, check_reply, keep_share, unwrap_fence
from data_gen.promises import round_up
from interpreter import block_lengths, measure, parse, repetition, strip

ORIGINAL = "Tips:\n1. Sleep well every night.\n2. Drink water often.\nDone."


def P(topic="a", tokens=5):
    return f'<promise topic="{topic}" tokens="{tokens}"/>'


GOOD = (f"Tips:{P('sleep')}<async>\n1. Sleep well every night.</async>{P('water')}<async>\n2. Drink water often."
        "</async><sync/>\nDone.")


def check(reply, original=ORIGINAL, **kw):
    return check_reply(reply, original, bpe_tokenizer(), **kw)


@pytest.mark.parametrize("reply, rule, detail", [
    (None, "teacher-failed", None),
    (f"Tips:{P()}\n1. Sleep well every night.\n2. Drink water often.\nDone.", "invalid", "promise-without-block"),
    ("Tips:\n1. Sleep well every night.</async>\n2. Drink water often.\nDone.", "invalid", "stray-close"),
    (f"Tips:{P()}<async>\n1. Sleep well every night.{P()}<async>\n2. Drink water often.</async></async>\nDone.",
     "nesting", "nesting"),
    (f"Tips:{P('one two three four five six seven eight nine')}<async>\n1. Sleep well every night.</async>"
     "\n2. Drink water often.\nDone.", "bad-topic", "bad-topic"),
    (GOOD.replace("Drink water often", "Drink water"), "changed-text", None),
    (GOOD.replace("Tips:", "Here you go!\nTips:"), "changed-text", None),
    ("I cannot annotate this answer.", "changed-text", None),
    (f"Tips:{P()}<async></async>" + ORIGINAL[5:], "empty-block", None),
])
def test_bad_replies_are_rejected_by_their_rule(reply, rule, detail):
    verdict = check(reply)
    assert verdict.annotated is None and verdict.rule == rule
    assert (verdict.detail.split(":")[0] if verdict.detail else None) == detail


def test_block_count_bounds():
    assert check(GOOD, min_blocks=3).rule == "too-few-blocks"
    assert check(GOOD, max_blocks=1).rule == "too-many-blocks"
    assert check(GOOD, min_blocks=2, max_blocks=2).rule is None


def test_blocks_that_repeat_one_another_are_rejected_when_asked():
    """A block sees only its own topic: a student taught on answers whose items repeat writes one item again
    and again. Repeated topics (list numbers aside) or blocks sharing their 3-grams are dropped on request."""
    twice = GOOD.replace(P("water"), P("2. Sleep")).replace(P("sleep"), P("1. sleep"))
    assert check(twice).rule is None  # kept by default
    assert check(twice, max_block_repetition=0.9).rule == "repeated-blocks"
    assert check(GOOD, max_block_repetition=0.0).rule is None  # distinct topics, no shared 3-gram
    same = "Tips:\n1. Sleep well every night now.\n2. Sleep well every night too.\nDone."
    echo = (f"Tips:{P('sleep')}<async>\n1. Sleep well every night now.</async>{P('rest')}<async>\n2. Sleep well "
            "every night too.</async><sync/>\nDone.")
    assert check(echo, same, max_block_repetition=0.5).rule == "repeated-blocks"  # 4 of 5 3-grams shared
    assert check(echo, same, max_block_repetition=0.9).rule is None


def test_tokens_are_rewritten_to_the_true_block_length_rounded_up():
    tok = bpe_tokenizer()
    for granularity in (1, 10, 25):
        verdict = check(GOOD, granularity=granularity)
        doc = parse(verdict.annotated)
        true = block_lengths(doc, tok)
        assert [p.tokens for p in doc.promises] == [round_up(n, granularity) for n in true]
        assert all(n <= p.tokens < n + granularity for n, p in zip(true, doc.promises))
        assert strip(verdict.annotated) == ORIGINAL
    assert check(GOOD).fixes == ["tokens-rewritten"]
    assert check(check(GOOD).annotated).fixes == []  # already right: nothing to fix


def test_a_kept_reply_carries_its_costs_and_a_measured_one_is_not_tokenized_again():
    tok = bpe_tokenizer()
    verdict = check(GOOD)
    assert verdict.kept.costs == measure(verdict.annotated, tok) and verdict.kept.doc == parse(verdict.annotated)
    calls = []

    def counting(text, **kw):
        calls.append(text)
        return tok(text, **kw)

    again = check_reply(verdict.kept, ORIGINAL, counting)
    assert again.kept == verdict.kept and again.fixes == [] and calls == []
    assert check_reply(verdict.kept, ORIGINAL + "!", counting).rule == "changed-text"
    plain = check(ORIGINAL.replace("\nDone.", "<sync/>\nDone."))
    assert plain.kept.costs == measure(ORIGINAL, tok)


def test_block_length_counts_the_async_tags_as_the_layout_tokenizes_them():
    doc = parse(f"x{P()}<async> a b c</async>")
    assert block_lengths(doc, WordTokenizer()) == [5]  # <async> a b c </async>


def test_a_code_fence_around_the_whole_reply_is_unwrapped_and_counted():
    verdict = check(f"```markdown\n{GOOD}\n```")
    assert verdict.rule is None and verdict.fixes == ["unwrapped-fence", "tokens-rewritten"]
    assert strip(verdict.annotated) == ORIGINAL


def test_an_answer_that_is_a_code_block_keeps_its_fence():
    code = "```python\nprint(1)\n```"
    assert unwrap_fence(code) == "print(1)"
    verdict = check(code, original=code)
    assert verdict.annotated == code and verdict.fixes == []


def test_whitespace_around_the_reply_is_made_the_original_s():
    verdict = check("\n" + GOOD + "\n\n")
    assert verdict.rule is None and "outer-whitespace" in verdict.fixes
    assert strip(verdict.annotated) == ORIGINAL


def test_a_reply_without_blocks_keeps_the_plain_answer():
    verdict = check(ORIGINAL.replace("\nDone.", "<sync/>\nDone."))
    assert verdict.annotated == ORIGINAL and verdict.rule is None


def test_answer_rules():
    assert check_answer("  \n", 0.35) == "empty-answer"
    assert check_answer("\n".join(f"{i}. Pluto is far" for i in range(30)), 0.35) == "repetitive-answer"
    assert check_answer("Use <sync/> here.", 0.35) == "answer-has-tags"
    assert check_answer(f"x{P()}y", 0.35) == "answer-has-tags"  # invalid Pasta-Lang is a tag all the same
    assert check_answer("Use <div> and List<T> freely; a < b.", 0.35) is None
    assert repetition(ORIGINAL) == 0.0


def test_a_cut_answer_is_trimmed_to_its_last_full_line_or_dropped():
    assert trim_cut_answer("1. One thing.\n2. Another thing.\n3. And a thi") == "1. One thing.\n2. Another thing."
    assert trim_cut_answer("The first sentence is long enough to keep. Then a cut") == \
        "The first sentence is long enough to keep."
    assert trim_cut_answer("Short.\nA very long line that was cut in the middle of its own text") is None


def test_plain_examples_are_kept_up_to_their_share():
    forked, plain = list(range(8)), list("abcde")
    assert keep_share(forked, plain, 0.2) == (["a", "b"], ["c", "d", "e"])  # 2 of 10 kept
    assert keep_share(forked, plain, 0.0) == ([], plain)
    assert keep_share(forked, plain, 1.0) == (plain, [])


def test_the_test_split_forks_as_often_as_the_kept_set():
    """keep_share keeps the answers without blocks of smallest id, and the test split is taken by id too: it
    must not end up all plain (12 of 15 in the full demo's dataset, where a fifth of the set is plain)."""
    rows = [{"id": f"{i:03d}", "blocks": 0 if i < 20 else 3} for i in range(100)]
    train, test = writer.split(rows, 0.1)
    assert len(test) == 10 and sum(not r["blocks"] for r in test) == 2
    assert sorted(r["id"] for r in train + test) == [r["id"] for r in rows]
    assert writer.split(list(reversed(rows)), 0.1)[1] == test  # stable: by id, not by order


def test_an_instruction_answered_twice_is_tested_on_both_answers_and_trained_on_neither():
    rows = [{"id": f"{i:03d}{suffix}", "blocks": 3} for i in range(20) for suffix in ("", "-1")]
    train, test = writer.split(rows, 0.05)  # 2 rows: the first instruction's two answers
    assert sorted(r["id"] for r in test) == ["000", "000-1"]
    rows = [r for r in rows if r["id"] != "000-1"] + [{"id": "019-2", "blocks": 3}]
    train, test = writer.split(rows, 0.1)  # 4 rows: 000, 001, 001-1, 002; 002-1 follows 002
    assert sorted(r["id"] for r in test) == ["000", "001", "001-1", "002", "002-1"]
    assert {r["id"].split("-")[0] for r in train}.isdisjoint(r["id"].split("-")[0] for r in test)
    assert len(train) + len(test) == len(rows)

"""Positions, visibility and loss targets against the spec: its worked example and a brute-force reading."""

import torch
from hypothesis import given, settings
from strategies import stored_sequences
from tiny import CharTokenizer, WordTokenizer, bpe_tokenizer

from interpreter import IGNORE, MAIN, PROMPT, build_layout, parse
from interpreter.parser import Block, MainText

EXAMPLE = ('Try<promise topic="a" tokens="3"/><async>x</async><promise topic="b" tokens="2"/>'
           "<async>y z</async><sync/>End")


def test_spec_worked_example():
    tok = WordTokenizer()
    lay = build_layout(EXAMPLE, tok, prompt_ids=list(range(10)))
    words = ["Try", "pa", "<async>", "x", "</async>", "pb", "<async>", "y", "z", "</async>", "<sync/>", "End"]
    assert lay.position_ids[10:] == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 18, 20]
    assert lay.thread[10:] == [MAIN, MAIN, 1, 1, 1, MAIN, 2, 2, 2, 2, MAIN, MAIN]
    seen = {w: [words[j - 10] for j in range(10, 10 + len(words)) if j != i and lay.visible(i, j)]
            for i, w in zip(range(10, 22), words, strict=False) if w in ("pb", "y", "<sync/>", "End")}
    assert seen["pb"] == ["Try", "pa"]
    assert seen["y"] == ["Try", "pa", "pb", "<async>"]  # never block A
    assert seen["<sync/>"] == ["Try", "pa", "pb"]
    assert seen["End"] == words[:-1]
    assert all(lay.visible(i, j) for i in range(10, 22) for j in range(10))  # everyone sees the prompt


def test_targets_follow_each_thread_and_skip_forced_openings():
    tok = WordTokenizer()
    lay = build_layout(EXAMPLE, tok, prompt_ids=[100, 101], end_id=999)
    ids = lay.input_ids
    name = {v: k for k, v in tok.vocab.items()} | {999: "<end>"}
    pairs = [(name.get(ids[i], "prompt"), name[t]) for i, t in enumerate(lay.targets) if t != IGNORE]
    assert pairs == [
        ("prompt", "Try"), ("Try", '<promise topic="a" tokens="3"/>'),
        ('<promise topic="a" tokens="3"/>', '<promise topic="b" tokens="2"/>'),  # main jumps over block A
        ("<async>", "x"), ("x", "</async>"),  # the forced <async> is input only, never a target
        ('<promise topic="b" tokens="2"/>', "<sync/>"), ("<async>", "y"), ("y", "z"), ("z", "</async>"),
        ("<sync/>", "End"), ("End", "<end>"),
    ]
    assert lay.thread[:2] == [PROMPT, PROMPT]


def _brute_force(doc, tokenizer, prompt_len):
    """Reads PASTA-LANG.md's rules literally, token by token, with no shared code."""
    toks = [{"thread": "prompt"} for _ in range(prompt_len)]
    block = 0
    for seg in doc.segments:
        if isinstance(seg, MainText):
            toks += [{"thread": "main"} for _ in tokenizer(seg.text)["input_ids"]]
        elif isinstance(seg, Block):
            block += 1
            n = len(tokenizer(seg.promise.raw)["input_ids"])
            toks += [{"thread": "main", "promise": block, "N": seg.promise.tokens, "last": k == n - 1}
                     for k in range(n)]
            body = seg.open.raw + seg.text + seg.close.raw
            toks += [{"thread": block} for _ in tokenizer(body)["input_ids"]]
        else:
            n = len(tokenizer(seg.raw)["input_ids"])
            toks += [{"thread": "main", "sync": True, "last": k == n - 1} for k in range(n)]
    promise_last = {t["promise"]: i for i, t in enumerate(toks) if t.get("promise") and t["last"]}
    sync_spans = []  # (first, last) index of each sync tag
    for i, t in enumerate(toks):
        if t.get("sync") and (i == 0 or not toks[i - 1].get("sync") or toks[i - 1]["last"]):
            sync_spans.append([i, i])
        if t.get("sync"):
            sync_spans[-1][1] = i

    def main_sees(i, j):
        if toks[j]["thread"] in ("prompt", "main"):
            return True
        b = toks[j]["thread"]
        return any(promise_last[b] < first and last < i for first, last in sync_spans)

    def sees(i, j):
        if j > i:
            return False
        if toks[i]["thread"] in ("prompt", "main"):
            return main_sees(i, j)
        b, p = toks[i]["thread"], promise_last[toks[i]["thread"]]
        return toks[j]["thread"] == b or j <= p and main_sees(p, j)

    pos, main_next, last_pos = [], 0, {}
    for t in toks:
        if t["thread"] in ("prompt", "main"):
            pos.append(main_next)
            main_next += 1
            if t.get("promise") and t["last"]:
                main_next = pos[-1] + 1 + t["N"]
                last_pos[t["promise"]] = pos[-1]
            if t.get("sync") and t["last"]:
                main_next = max([main_next] + [v + 1 for v in last_pos.values()])
        else:
            last_pos[t["thread"]] += 1
            pos.append(last_pos[t["thread"]])
    n = len(toks)
    return pos, [[sees(i, j) for j in range(n)] for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(stored_sequences())
def test_layout_matches_brute_force_reading_of_the_spec(case):
    text, _ = case
    tok = CharTokenizer()
    doc = parse(text)
    lay = build_layout(doc, tok, prompt_ids=[1, 2, 3])
    pos, sees = _brute_force(doc, tok, 3)
    assert lay.position_ids == pos
    assert lay.bool_mask().tolist() == sees


def test_additive_mask_blocks_what_is_not_visible():
    lay = build_layout(EXAMPLE, bpe_tokenizer(), prompt_ids=[1, 2])
    mask = lay.additive_mask(torch.bfloat16)
    allowed = torch.from_numpy(lay.bool_mask())
    assert mask.shape == (len(lay), len(lay)) and mask.dtype == torch.bfloat16
    assert (mask[allowed] == 0).all() and (mask[~allowed] == torch.finfo(torch.bfloat16).min).all()
    assert not allowed.triu(1).any()  # causal in stored order

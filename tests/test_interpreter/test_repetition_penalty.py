"""Options.repetition_penalty: HF's and vLLM's penalty, counted over what each thread sees, tags and ends spared."""

import pytest
import torch
from tiny import bpe_tokenizer, tag_token_tokenizer, tiny_model

from interpreter import Engine, Options, Script, encode, turn_end_id
from interpreter.request import Thread
from interpreter.sampling import penalize

STORED = ('Tips:<promise topic="sleep" tokens="20"/><async> sleep eight hours</async>'
          '<promise topic="water" tokens="20"/><async> drink water</async><sync/> Together they add up.')


@pytest.fixture(scope="module")
def engine():
    tok = bpe_tokenizer()
    return Engine(tiny_model("llama", len(tok)), tok)


def test_sequential_penalty_equals_model_generate(engine):
    ids = encode(engine.tokenizer, "Try these tips")  # no end token in the context: HF's penalty and ours agree
    opts = Options(max_new_tokens=40, repetition_penalty=1.5)
    ours = engine.generate(ids, mode="sequential", options=opts)
    x = torch.tensor([ids])
    theirs = engine.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                                   repetition_penalty=1.5, eos_token_id=sorted(engine.end_ids),
                                   pad_token_id=1)[0, len(ids):].tolist()
    assert ours.text == engine.tokenizer.decode(theirs)
    plain = engine.generate(ids, mode="sequential", options=Options(max_new_tokens=40))
    assert plain.text != ours.text  # the random model repeats itself; the penalty changes what it writes


def test_generate_batch_penalizes_as_the_engine_does(engine):
    prompts = ["Give me three tips.", "Compare two things"]  # chat prompts hold the end token: it is spared
    opts = Options(max_new_tokens=30, repetition_penalty=1.3)
    batch = engine.generate_batch(prompts, opts, batch_size=2)
    assert [r.text for r in batch] == [engine.generate(p, "sequential", opts).text for p in prompts]


def test_pasta_mode_draws_with_the_penalty(engine):
    plain = engine.generate("Give me three tips.", options=Options(max_new_tokens=30))
    penalized = engine.generate("Give me three tips.", options=Options(max_new_tokens=30, repetition_penalty=2.0))
    assert plain.text != penalized.text


@pytest.mark.parametrize("make_tokenizer", [bpe_tokenizer, tag_token_tokenizer])
def test_a_thread_counts_what_it_sees_in_order_topics_but_no_tag_piece(make_tokenizer):
    tok = make_tokenizer()
    engine = Engine(tiny_model("llama", len(tok)), tok)
    prompt = encode(tok, "Try these tips")
    # a replay draws no penalty, but keeps the contexts a penalized decoding would count
    request = engine.add(prompt, options=Options(repetition_penalty=1.15),
                         source=Script.from_stored(STORED, tok, turn_end_id(tok)))
    engine._run([request])
    main, first, second = request.main, *request.blocks
    before = prompt + encode(tok, "Tips:")
    sleep, water = encode(tok, "sleep"), encode(tok, "water")  # topics are text: main gives no topic twice
    assert first.context == before + sleep + encode(tok, " sleep eight hours")
    assert second.context == before + sleep + water + encode(tok, " drink water")  # never its sibling's text
    # main, after the sync, sees both blocks (the token it drew at the sync, before it saw them, comes first); no
    # token of a tag's fixed pieces is counted
    assert sorted(main.context) == sorted(before + sleep + water + encode(tok, " sleep eight hours")
                                          + encode(tok, " drink water") + encode(tok, " Together they add up."))


@pytest.mark.parametrize("written, in_tag", [('<promise topic="', False), ('<promise topic="1. Pack', False),
                                             ('<promise topic="1. Pack"', True), ('<promise topic="a" tokens="4', True),
                                             ("<sy", True), ("Pack", False)])
def test_a_topic_is_text_to_the_penalty_and_a_tag_s_fixed_pieces_are_not(written, in_tag):
    thread = Thread(0, None)
    thread.lexer.feed(written)
    assert thread.in_tag == in_tag


def test_penalize_spares_a_thread_inside_a_tag():
    class Thread:
        def __init__(self, context, in_tag):
            self.context, self.in_tag = context, in_tag

    rows = torch.tensor([[2.0, -2.0, 1.0], [2.0, -2.0, 1.0]])
    out = penalize(rows, [Thread([0, 1, 0], False), Thread([0, 1, 0], True)], 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0], [2.0, -2.0, 1.0]]


def test_options_refuse_a_penalty_that_is_not_positive():
    with pytest.raises(ValueError, match="repetition_penalty > 0"):
        Options(repetition_penalty=0.0)

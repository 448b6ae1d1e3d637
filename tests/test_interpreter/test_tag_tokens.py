import pytest
import torch
from tiny import bpe_tokenizer, tiny_model

from interpreter import TAG_PIECES, add_tag_tokens, build_layout, has_tag_tokens, measure, tag_cost
from interpreter.layout import encode

TEXT = 'Tips:<promise topic="sleep" tokens="20"/><async>\n1. Sleep</async><sync/>\nDone <img src="a"/>.'


def test_added_tag_tokens_are_cheaper_and_decode_exactly():
    plain = bpe_tokenizer()
    tok = _fresh()
    model = tiny_model(vocab_size=len(tok))
    before = tag_cost(tok)["per_promise"]
    assert 0 < add_tag_tokens(tok, model) <= len(TAG_PIECES)
    assert has_tag_tokens(tok) and not has_tag_tokens(plain)
    after = tag_cost(tok)["per_promise"]
    assert after < before
    assert tok.decode(encode(tok, TEXT)) == TEXT  # HTML's "/> stays exact text
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert measure(TEXT, tok).theoretical_speedup > measure(TEXT, plain).theoretical_speedup
    assert add_tag_tokens(tok, model) == 0  # idempotent


def test_new_embeddings_start_at_the_mean_of_their_plain_text_pieces():
    tok = _fresh()
    model = tiny_model(vocab_size=len(tok))
    plain_ids = encode(tok, "<async>")
    expected = model.get_input_embeddings().weight[plain_ids].mean(0).detach().clone()
    add_tag_tokens(tok, model)
    new = tok.convert_tokens_to_ids("<async>")
    assert torch.allclose(model.get_input_embeddings().weight[new], expected)


def test_layout_uses_one_token_per_tag_piece_when_added():
    tok = _fresh()
    add_tag_tokens(tok)
    lay = build_layout(TEXT, tok, prompt_ids=[])
    pieces = tok.convert_ids_to_tokens(lay.input_ids)
    for piece in ("<async>", "</async>", "<sync/>", '<promise topic="', '" tokens="20"/>'):
        assert piece in pieces


def test_a_length_in_tens_closes_a_promise_in_one_token_and_others_in_pieces():
    tok = _fresh()
    add_tag_tokens(tok)
    tens = encode(tok, '<promise topic="a" tokens="40"/>')
    other = encode(tok, '<promise topic="a" tokens="45"/>')
    assert tok.convert_ids_to_tokens(tens)[-1] == '" tokens="40"/>'
    assert tok.convert_ids_to_tokens(other)[-1] == '"/>' and len(other) > len(tens)
    assert tok.decode(other) == '<promise topic="a" tokens="45"/>'


@pytest.mark.slow
def test_embedded_tokenizer_tag_costs():
    from interpreter import EMBEDDED_MODEL, load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    plain = tag_cost(tok)
    add_tag_tokens(tok)
    cheap = tag_cost(tok)
    assert plain["per_promise"] == 18 and cheap["per_promise"] == 5  # the numbers docs/pasta-lang.md quotes
    assert plain["sync"] == 3 and cheap["sync"] == 1
    assert tag_cost(tok, "sleep", 25)["per_promise"] == 8  # a length off the tens: pieces and digits


def _fresh():
    from transformers import PreTrainedTokenizerFast

    base = bpe_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer.__class__.from_str(
        base.backend_tokenizer.to_str()), eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = base.chat_template
    return tok

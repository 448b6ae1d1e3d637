"""Tiny tokenizers and random models built in code, so that most tests need no download."""

from __future__ import annotations

import re
from functools import cache

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class CharTokenizer:
    """One token per character (id = code point): every thread boundary falls on a token boundary."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class WordTokenizer:
    """Each Pasta-Lang tag is one token, each other word one token (the spec's worked example)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        parts = re.findall(r"<[^>]*>|[^<\s]+|\s+", text)
        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab)) for p in parts if not p.isspace()]}


@cache
def bpe_tokenizer(vocab_size: int = 400):
    """A small byte-level BPE tokenizer with a ChatML template, trained in a fraction of a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Try these tips: sleep eight hours, drink water, walk every day, and read a book.",
        "1. First step\n2. Second step\n3. Third step\nTogether they add up.",
        '<promise topic="sleep" tokens="20"/><async>\n1. Sleep well</async><sync/>',
        "def add(a, b):\n    return a + b\n# HTML: <div class=\"x\">a < b</div> and List<T>",
        "The quick brown fox jumps over the lazy dog. Pros and cons, compare, explain.",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tag_token_tokenizer():
    """A private copy of bpe_tokenizer() with the tag pieces added as tokens (interpreter.add_tag_tokens)."""
    from transformers import PreTrainedTokenizerFast

    from interpreter import add_tag_tokens

    base = bpe_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer.__class__.from_str(
        base.backend_tokenizer.to_str()), eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = base.chat_template
    add_tag_tokens(tok)
    return tok


def tiny_model(family: str = "llama", vocab_size: int = 400, seed: int = 0):
    """A random causal LM of the given family, small enough for a test."""
    import torch
    from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  attn_implementation="sdpa")
    config = {"llama": lambda: LlamaConfig(**common),
              "gemma": lambda: GemmaConfig(head_dim=16, **common)}[family]()
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def memorize(model, tokenizer, prompt, stored: str, steps: int = 150, lr: float = 3e-3):
    """Trains `model` on one stored sequence with PASTA masks until it writes it back (for tests that
    need a model that really writes tags)."""
    import torch

    from interpreter import build_layout, prompt_ids, turn_end_id

    lay = build_layout(stored, tokenizer, prompt_ids(tokenizer, prompt), end_id=turn_end_id(tokenizer))
    ids, pos = torch.tensor([lay.input_ids]), torch.tensor([lay.position_ids])
    mask, targets = lay.additive_mask()[None, None], torch.tensor(lay.targets)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits[0]
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()

"""Fixtures for the finetune tests: a small hand-written Pasta-Lang dataset and tiny random models on disk."""

from __future__ import annotations

import json

from tiny import bpe_tokenizer

from interpreter import parse, strip

ANSWERS = [
    ("Give me tips to sleep well.",
     'Try these:<promise topic="dark room" tokens="9"/><async>\n1. Keep the room dark.</async>'
     '<promise topic="no screens" tokens="8"/><async>\n2. No screens at night.</async><sync/>\nTogether they add up.'),
    ("Compare tea and coffee.",
     'Both wake you up.<promise topic="tea" tokens="12"/><async>\nTea: less caffeine, more calm.</async>'
     '<promise topic="coffee" tokens="3"/><async>\nCoffee: strong and quick, and a bit bitter.</async><sync/>'
     "\nPick by taste."),
    ("Write a tiny Python function that adds.",
     "def add(a, b):\n    return a + b\n# HTML stays text: <div>a < b</div>"),
    ("List three steps.",
     'Steps:<promise topic="first" tokens="5"/><async>\n1. First step</async>'
     '<promise topic="second" tokens="5"/><async>\n2. Second step</async>'
     '<promise topic="third" tokens="5"/><async>\n3. Third step</async>'),
    ("Pros and cons of walking?",
     'Walking is easy.<promise topic="pros" tokens="6"/><async>\nPros: cheap, calm.</async><sync/>'
     '\nCons: slow.<promise topic="summary" tokens="4"/><async>\nWalk daily.</async>'),
    ("Say hello.", "Hello! How can I help you today?"),
]


def rows() -> list[dict]:
    out = []
    for i, (question, annotated) in enumerate(ANSWERS):
        doc = parse(annotated)
        out.append({"id": f"fx-{i}", "messages": [{"role": "user", "content": question}], "annotated": annotated,
                    "stripped": strip(annotated), "source": "fixture", "teacher": "hand", "blocks": len(doc.blocks)})
    return out


def save_dataset(folder) -> str:
    """A DatasetDict (train: all rows, test: the first two) saved like data_gen saves it, plus its JSONL files."""
    from datasets import Dataset, DatasetDict

    data = rows()
    DatasetDict(train=Dataset.from_list(data), test=Dataset.from_list(data[:2])).save_to_disk(str(folder))
    for name, part in (("train", data), ("test", data[:2])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return str(folder)


def fresh_tokenizer():
    """A private copy of the tiny BPE tokenizer (bpe_tokenizer() is shared, and adding tag tokens changes it)."""
    from transformers import PreTrainedTokenizerFast

    base = bpe_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer.__class__.from_str(
        base.backend_tokenizer.to_str()), eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = base.chat_template
    return tok


def tiny_lm(family: str = "llama", vocab_size: int = 400, tied: bool | None = None, seed: int = 0):
    """A random causal LM of the Llama, Gemma, Qwen2 or Mistral family (tied embeddings when asked)."""
    import torch
    from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  attn_implementation="sdpa", bos_token_id=0, eos_token_id=1, pad_token_id=1)  # bpe_tokenizer's
    if tied is not None:
        common["tie_word_embeddings"] = tied
    config = {"llama": LlamaConfig, "gemma": lambda **kw: GemmaConfig(head_dim=16, **kw),
              "qwen2": Qwen2Config, "mistral": MistralConfig}[family](**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def save_tiny_model(folder, family: str = "llama", tied: bool | None = None) -> str:
    """A tiny random model and the tiny BPE tokenizer, saved as a model folder `interpreter.load_model` reads."""
    tok = bpe_tokenizer()
    tiny_lm(family, len(tok), tied).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


FORKING = ('<promise topic="a" tokens="4"/><async> one</async><promise topic="b" tokens="4"/><async> two</async>'
           "<sync/>")


def preference_run(root, prompts: int = 4) -> str:
    """A run folder for preference sampling: as models/pasta-sft a tiny tag-token policy half-trained on a forking
    answer (its samples end in varied ways, so best-of-N finds pairs), and `prompts` training prompts."""
    from tiny import memorize, tag_token_tokenizer, tiny_model

    tok = tag_token_tokenizer()
    question = [{"role": "user", "content": "Count"}]
    policy = root / "models" / "pasta-sft"
    memorize(tiny_model("llama", len(tok)), tok, question, FORKING, steps=40).save_pretrained(policy)
    tok.save_pretrained(policy)
    (root / "dataset").mkdir()
    (root / "dataset" / "train.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"List {i} things"}],
                    "stripped": " one two"}) + "\n" for i in range(prompts)))
    return str(policy)

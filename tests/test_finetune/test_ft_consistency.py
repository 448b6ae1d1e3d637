"""The consistency proof: the training forward (collator batch, padded, as the trainer runs it) gives the same
per-token logits as the interpreter's teacher-forced replay of the same stored sequences."""

from collections import defaultdict

import pytest
import torch
from ft_helpers import fresh_tokenizer, rows, tiny_lm
from trl.trainer.utils import add_fused_lm_head

from finetune.collator import PastaCollator
from interpreter import IGNORE, Engine, add_tag_tokens

REPLAYED = (0, 2, 3, 4)  # two blocks + sync, plain text with HTML, blocks left unsynced, sync mid-answer
CASES = [("llama", False), ("llama", True), ("gemma", True), ("qwen2", False), ("mistral", True)]


def per_thread_rows(lay_thread, targets):
    """Target-bearing rows grouped by thread (the prompt's last token belongs to main), in order."""
    out = defaultdict(list)
    for i, (t, y) in enumerate(zip(lay_thread, targets)):
        if y != IGNORE:
            out[max(t, 0)].append(i)
    return out


@pytest.mark.parametrize(("family", "tag_tokens"), CASES, ids=[f + ("-tags" if t else "-plain") for f, t in CASES])
def test_training_forward_equals_engine_replay(family, tag_tokens):
    tok = fresh_tokenizer()
    model = tiny_lm(family, len(tok))
    if tag_tokens:
        add_tag_tokens(tok, model)
    data = rows()
    collator = PastaCollator(tok, "annotated")
    batch = collator(data)  # one padded batch, the way the trainer sees it
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"]).logits
    engine = Engine(model, tok)
    compared = 0
    for b in REPLAYED:
        row = data[b]
        replay = engine.replay(row["messages"], row["annotated"], record_logits=True)
        assert replay.stored == row["annotated"] and not replay.repairs
        drawn = defaultdict(list)
        for tid, r in replay.logits:
            drawn[tid].append(r)
        lay = collator.layout(row)
        rows_of = per_thread_rows(lay.thread, lay.targets)
        assert {t: len(v) for t, v in rows_of.items()} == {t: len(v) for t, v in drawn.items()}
        for tid, idx in rows_of.items():
            ours = logits[b, idx]
            assert torch.allclose(ours, torch.stack(drawn[tid]), atol=1e-4), (family, row["id"], tid)
            # each of those rows is trained to predict exactly the token the engine drew there
            assert batch["shift_labels"][b, idx].tolist() == [lay.targets[i] for i in idx]
            compared += len(idx)
    assert compared == int((batch["shift_labels"][list(REPLAYED)] != IGNORE).sum())  # every trained row was checked


def test_trained_log_probs_are_the_engines(tmp_path):
    """TRL's fused LM head (what SFTTrainer's loss reads) scores each target with the engine's probability."""
    tok = fresh_tokenizer()
    model = tiny_lm("llama", len(tok), tied=True)
    add_tag_tokens(tok, model)
    data = rows()
    batch = PastaCollator(tok, "annotated")(data)
    engine = Engine(model, tok)
    add_fused_lm_head(model, outputs=("log_probs",))
    with torch.no_grad():
        fused = model(**{k: v for k, v in batch.items() if k != "real_tokens"}, fused_lm_head=True)
    expected = torch.zeros_like(fused.log_probs)
    for b in REPLAYED:
        row = data[b]
        replay = engine.replay(row["messages"], row["annotated"], record_logits=True)
        drawn = defaultdict(list)
        for tid, r in replay.logits:
            drawn[tid].append(r.log_softmax(-1))
        lay = PastaCollator(tok).layout(row)
        for tid, idx in per_thread_rows(lay.thread, lay.targets).items():
            for i, lp in zip(idx, drawn[tid]):
                expected[b, i] = lp[lay.targets[i]]
    replayed = list(REPLAYED)
    assert torch.allclose(fused.log_probs[replayed], expected[replayed], atol=1e-4)
    with torch.no_grad():  # the model's own causal-LM loss reads the same targets unshifted
        own = model(**{k: v for k, v in batch.items() if k != "real_tokens"}).loss
    assert torch.allclose(own, fused.loss, atol=1e-5)

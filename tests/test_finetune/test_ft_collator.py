"""The collator: batches are the interpreter's layouts, padded without leaking, truncated causally."""

import pytest
import torch
from ft_helpers import rows, tiny_lm
from tiny import bpe_tokenizer

from finetune.collator import PastaCollator
from finetune.data import prepare
from interpreter import IGNORE
from pipeline.dataset import DatasetError


def test_batch_rows_are_the_layouts_and_padding_is_walled_off():
    collator = PastaCollator(bpe_tokenizer(), "annotated")
    data = rows()
    batch = collator(data)
    lays = [collator.layout(r) for r in data]
    width = max(map(len, lays))
    assert batch["input_ids"].shape == (len(data), width)
    assert batch["attention_mask"].shape == (len(data), 1, width, width)
    assert int(batch["real_tokens"]) == sum(map(len, lays))
    low = torch.finfo(torch.float32).min
    for b, lay in enumerate(lays):
        n = len(lay)
        assert batch["input_ids"][b, :n].tolist() == lay.input_ids
        assert batch["position_ids"][b, :n].tolist() == lay.position_ids
        assert batch["labels"][b, :n].tolist() == lay.targets == batch["shift_labels"][b, :n].tolist()
        assert torch.equal(batch["attention_mask"][b, 0, :n, :n], lay.additive_mask())
        assert (batch["attention_mask"][b, 0, :n, n:] == low).all()  # no real token sees padding
        pad = batch["attention_mask"][b, 0, n:, :]
        assert torch.equal(pad == 0, torch.eye(width, dtype=torch.bool)[n:])  # padding sees itself only
        assert (batch["labels"][b, n:] == IGNORE).all()


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_padded_batch_gives_each_example_its_own_logits(family):
    tok = bpe_tokenizer()
    model = tiny_lm(family, len(tok))
    collator = PastaCollator(tok, "annotated")
    data = rows()

    def logits(batch):
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=batch["attention_mask"]).logits

    together = logits(collator(data))
    for b, row in enumerate(data):
        alone = logits(collator([row]))[0]
        assert torch.allclose(together[b, :len(alone)], alone, atol=1e-5), row["id"]


def test_stripped_answers_train_as_plain_causal_sft():
    collator = PastaCollator(bpe_tokenizer(), "stripped")
    row = rows()[0]
    lay = collator.layout(row)
    n = len(lay)
    batch = collator([row])
    assert torch.equal(batch["attention_mask"][0, 0] == 0, torch.ones(n, n, dtype=torch.bool).tril())
    assert lay.position_ids == list(range(n))
    answer = range(lay.prompt_len - 1, n - 1)  # from the generation prompt's last token to the token before the end
    assert [lay.targets[i] for i in answer] == lay.input_ids[lay.prompt_len:]
    assert all(lay.targets[i] == IGNORE for i in range(lay.prompt_len - 1)) and lay.targets[-1] == IGNORE


def test_truncation_keeps_the_first_rows_exactly():
    full = PastaCollator(bpe_tokenizer(), "annotated")
    cut = PastaCollator(bpe_tokenizer(), "annotated", max_length=40)
    data = rows()[:2]
    a, b = full(data), cut(data)
    assert b["input_ids"].shape[1] == 40 and int(b["real_tokens"]) == 80
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(a[key][:, :40], b[key])
    assert torch.equal(a["attention_mask"][:, :, :40, :40], b["attention_mask"])


def test_invalid_rows_are_refused_with_their_place():
    from datasets import Dataset

    data = rows()
    data[3]["annotated"] = data[3]["annotated"].replace("</async>", "", 1)
    with pytest.raises(DatasetError, match=r"train.jsonl, row 3 \(id 'fx-3'\): annotated:.*\[nesting\]"):
        prepare(Dataset.from_list(data), PastaCollator(bpe_tokenizer()), "train.jsonl")
    with pytest.raises(DatasetError, match="no column 'annotated'"):
        prepare(Dataset.from_list([{"messages": [], "text": "x"}]), PastaCollator(bpe_tokenizer()), "x.jsonl")

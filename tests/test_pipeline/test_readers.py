"""One reader of a run's dataset (local forms and a hub id) and one of instruction files."""

import json

import datasets
import pytest

from pipeline.dataset import DatasetError, load_splits
from pipeline.prompts import PromptFileError, read_instructions

ROWS = [{"id": "a", "messages": [{"role": "user", "content": "Hi?"}], "annotated": "Hello."}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_dataset_reads_alike_from_every_local_form(tmp_path):
    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    _jsonl(run / "dataset" / "train.jsonl", ROWS)
    saved = tmp_path / "saved-run"  # as data_gen writes it: Arrow under <run>/dataset
    datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS)).save_to_disk(str(saved / "dataset"))
    for where in (run, run / "dataset", run / "dataset" / "train.jsonl", saved, saved / "dataset"):
        assert list(load_splits(where)["train"]) == ROWS, where


def test_a_hub_id_goes_to_the_hub_and_an_unreachable_hub_is_one_line(monkeypatch):
    asked = []

    def fake_hub(repo_id, *args, **kwargs):
        asked.append(repo_id)
        if repo_id == "org/offline":
            raise ConnectionError("no route to host")
        return datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS))

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert list(load_splits("org/pasta-data")["train"]) == ROWS and asked == ["org/pasta-data"]
    with pytest.raises(DatasetError, match=r"^org/offline: cannot load it from the hub \(ConnectionError: no route"):
        load_splits("org/offline")


def test_a_missing_dataset_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match="run `make dataset` first"):
        load_splits(tmp_path / "runs" / "nope")


def test_instruction_files_take_instructions_or_chats(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"instruction": "List fruits.", "category": "list"},
                                         {"id": 7, "messages": [{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": "Why?"}]}])
    first, second = read_instructions(path)
    assert first["messages"] == [{"role": "user", "content": "List fruits."}] and first["category"] == "list"
    assert second["id"] == "7" and second["instruction"] == "Why?" and len(second["messages"]) == 2
    _jsonl(path, [{"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "So."}]}])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:1: 'messages' must be a list of chat messages ending"):
        read_instructions(path)

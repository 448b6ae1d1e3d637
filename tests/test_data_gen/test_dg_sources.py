"""Sources: SlimOrca's ShareGPT schema (a local file), Alpaca JSON/JSONL, instruction/response, chat messages,
save_to_disk folders and the embedded seed set."""

import json

import pytest
from dg_common import write_jsonl

from data_gen.sources import SourceError, load_records

SLIMORCA = [
    {"conversations": [{"from": "system", "value": "You are an AI assistant.", "weight": None},
                       {"from": "human", "value": "Name three primary colors.", "weight": 0.0},
                       {"from": "gpt", "value": "Red, yellow and blue.", "weight": 1.0}]},
    {"conversations": [{"from": "human", "value": "What is 2 + 2?", "weight": 0.0},
                       {"from": "gpt", "value": "4", "weight": 1.0}]},
]


def test_sharegpt_rows_become_a_prompt_and_its_answer(tmp_path):
    records, counts = load_records(str(write_jsonl(tmp_path / "slimorca.jsonl", SLIMORCA)))
    assert records[0].messages == [{"role": "system", "content": "You are an AI assistant."},
                                   {"role": "user", "content": "Name three primary colors."}]
    assert records[0].answer == "Red, yellow and blue."
    assert records[1].messages == [{"role": "user", "content": "What is 2 + 2?"}] and records[1].answer == "4"
    assert records[0].source == "slimorca.jsonl" and counts["read"] == 2


def test_alpaca_json_puts_the_input_under_the_instruction(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Summarize.", "input": "A long text.", "output": "Short."},
                                {"instruction": "Say hi.", "input": "", "output": "Hi!"}]))
    records, _ = load_records(str(path))
    assert records[0].messages == [{"role": "user", "content": "Summarize.\n\nA long text."}]
    assert records[1].messages == [{"role": "user", "content": "Say hi."}] and records[1].answer == "Hi!"


def test_instruction_response_and_messages_schemas(tmp_path):
    records, _ = load_records(str(write_jsonl(tmp_path / "ir.jsonl", [{"instruction": "Q?", "response": "A."}])))
    assert (records[0].messages, records[0].answer) == ([{"role": "user", "content": "Q?"}], "A.")
    chat = [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}]
    records, _ = load_records(str(write_jsonl(tmp_path / "chat.jsonl", chat)))
    assert (records[0].messages, records[0].answer) == ([{"role": "user", "content": "Q?"}], "A.")


def test_a_save_to_disk_folder_is_read_by_split(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(SLIMORCA)}).save_to_disk(str(tmp_path / "ds"))
    records, _ = load_records(str(tmp_path / "ds"))
    assert [r.answer for r in records] == ["Red, yellow and blue.", "4"]
    with pytest.raises(SourceError, match="has no split 'validation'"):
        load_records(str(tmp_path / "ds"), split="validation")


def test_ids_are_stable_and_duplicates_and_broken_rows_are_counted(tmp_path):
    rows = SLIMORCA + [SLIMORCA[0], {"conversations": [{"from": "robot", "value": "?"}]}]
    first, counts = load_records(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    again, _ = load_records(str(write_jsonl(tmp_path / "b.jsonl", list(reversed(rows)))))
    assert {r.id for r in first} == {r.id for r in again} and len(first) == 2
    assert (counts["duplicate-record"], counts["unreadable-record"]) == (1, 1)


def test_max_examples_draws_the_same_subset_every_time():
    a, _ = load_records("seed", max_examples=20, seed=3)
    b, _ = load_records("seed", max_examples=20, seed=3)
    c, _ = load_records("seed", max_examples=20, seed=4)
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c] and len(a) == 20


def test_categories_select_rows_before_the_draw(tmp_path):
    records, _ = load_records("seed", categories=["short-fact", "code"])
    assert {r.kind for r in records} == {"short-fact", "code"} and len(records) >= 40
    drawn, _ = load_records("seed", max_examples=10, categories=["short-fact"])
    assert len(drawn) == 10 and {r.kind for r in drawn} == {"short-fact"}
    with pytest.raises(SourceError, match="has no 'category' column"):
        load_records(str(write_jsonl(tmp_path / "a.jsonl", SLIMORCA)), categories=["list"])


def test_the_seed_set_has_instructions_without_answers():
    records, counts = load_records("seed")
    assert counts["read"] >= 300 and all(r.answer is None and r.source == "seed" for r in records)
    assert len({r.kind for r in records}) == 8  # categories, so that answers of one kind share a batch


def test_errors_name_the_source_and_the_problem(tmp_path):
    with pytest.raises(SourceError, match=r"x.jsonl:2: not a JSON object"):
        (tmp_path / "x.jsonl").write_text('{"instruction": "a", "response": "b"}\n{oops\n')
        load_records(str(tmp_path / "x.jsonl"))
    with pytest.raises(SourceError, match=r"cannot tell the schema from its columns \['prompt', 'text'\]"):
        load_records(str(write_jsonl(tmp_path / "y.jsonl", [{"prompt": "a", "text": "b"}])))
    with pytest.raises(SourceError, match="not a JSON, JSONL or parquet file"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SourceError, match="nobody/no-such-dataset: cannot load this hub dataset here"):
        load_records("nobody/no-such-dataset")

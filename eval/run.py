"""The evaluation: every method answers every prompt (cached), a judge compares each answer with the
sequential baseline's, and the results become a table, a Pareto plot, an alpaca_eval export, FastChat
MT-Bench answers and a browsable report under <run_dir>/eval/.

The judge is built and probed before any decoding, so a wrong key, URL or model costs seconds, not a
night of generation. A pair the judge fails on is counted per row, never scored as a tie; above
`max_judge_failures` of a row the run stops with one line."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from interpreter import Engine, ModelNotFound, Options, cross_block_repetition, load_model, parse
from interpreter.models import DTYPE_HELP, pick_device, resolve_dtype
from pipeline.errors import cli as run_cli
from pipeline.jsonl import append_rows, read_rows
from pipeline.judges import JudgeArguments, check_failures, probed_judge
from pipeline.runfolder import hold, slug
from pipeline.shards import parse_shard, shard_path
from pipeline.tracking import log_results

from . import report
from .methods import Pasta, Sequential, SkeletonOfThought
from .pattern import PatternDecoder
from .prompts import check_sets, load_prompts, second_turn
from .shards import merge
from .winrate import bootstrap, geomean, length_adjusted_win_rate, win_rate

METHODS = {"sequential": Sequential, "pasta": Pasta, "sot": SkeletonOfThought, "pattern": PatternDecoder}


@dataclass
class EvalArguments(JudgeArguments):
    # Run folder
    run_dir: str = field(default="runs/demo", metadata={"help": "run folder: models from <run_dir>/models, "
                                                                "results to <run_dir>/eval"})
    # Prompts
    prompts: list[str] = field(default_factory=lambda: ["mt-bench"], metadata={
        "help": "prompt sets, each its own table: mt-bench, heldout (instructions no dataset of ours holds), "
                "alpaca-eval, alpaca-eval:PATH or a JSONL"})
    limit: list[int] | None = field(default=None, metadata={
        "help": "first N prompts of a set, taken across categories: one N for every set, or one for each set in "
                "the order of --prompts"})
    mt_bench_turns: int = field(default=2, metadata={
        "help": "MT-Bench turns to decode: 2 (the second asked after each method's own first answer, and both "
                "exported for FastChat's gen_judgment.py to <run_dir>/eval/mt_bench/model_answer) or 1 (first "
                "turns only: half the decoding, no FastChat export). Tables and judges use the first turn"})
    # Methods and models
    methods: list[str] = field(default_factory=lambda: ["sequential", "base", "pasta", "sot", "pattern"],
                               metadata={"help": "sequential (the Baseline-SFT model), base, pasta, sot, pattern"})
    baseline_model: str | None = field(default=None, metadata={"help": "default: <run>/models/baseline-sft"})
    base_model: str = field(default="smollm2-135m-instruct")
    pasta_models: list[str] = field(default_factory=list,
                                    metadata={"help": "default: every <run>/models/pasta-* and prefopt-* folder"})
    # Decoding
    max_new_tokens: int = 256
    max_threads: int = 8
    stop_loops: bool = field(default=False, metadata={"help": "end a thread that falls into a loop, for every method "
                                                              "alike (Options.stop_loops)"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "HF's and vLLM's repetition penalty (1 = off), tags and end tokens spared "
                "(Options.repetition_penalty), for every method alike"})
    dtype: str | None = field(default=None, metadata={"help": DTYPE_HELP})
    device: str | None = None
    interleave: bool = field(default=False, metadata={
        "help": "every row answers a prompt before any row answers the next, every model resident at once: the "
                "machine's speed drifting over a run falls on all rows alike. Off: one model resident at a time"})
    bootstrap: int = field(default=500, metadata={"help": "bootstrap resamples for confidence intervals"})
    # Tracking
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "where the results tables are logged too: wandb (offline without a login), tensorboard"})
    # Many workers
    shard: str | None = field(default=None, metadata={"help": "i/n: generate every n-th prompt from the i-th on, "
                                                               "into shard files; no judging or report"})
    merge_shards: int | None = field(default=None, metadata={"help": "n: join the n shards' generations (each "
                                                                     "prompt exactly once), then judge and report"})


def _models_dir(args: EvalArguments) -> Path:
    return Path(args.run_dir) / "models"


def plan(args: EvalArguments) -> list[tuple[str, str, str]]:
    """(method, label, model path) for every row of the table; the sequential baseline first."""
    models = _models_dir(args)
    baseline = args.baseline_model or str(models / "baseline-sft")
    if not os.path.isdir(baseline) and not baseline.startswith("smollm2"):
        raise SystemExit(f"no Baseline-SFT model at {baseline}: run `make finetune` first or pass --baseline_model")
    pasta = args.pasta_models or sorted(str(p) for p in models.glob("*") if (p / "config.json").exists()
                                        and p.name.startswith(("pasta-", "prefopt-")))
    rows = [("sequential", _label(baseline), baseline)]
    for m in args.methods:
        if m == "base":
            rows.append(("sequential", "base", args.base_model))
        elif m == "pasta":
            if not pasta:
                raise SystemExit(f"no PASTA model under {models} (pasta-*, prefopt-*): run `make finetune` or pass "
                                 "--pasta_models")
            rows += [("pasta", _label(p), p) for p in pasta]
        elif m in ("sot", "pattern"):
            rows.append((m, _label(baseline), baseline))
        elif m != "sequential":
            raise SystemExit(f"unknown method {m!r}; choose from sequential, base, pasta, sot, pattern")
    return rows


def weights_stamp(path: str) -> list:
    """Size and modification time of a model folder's weight files: a model trained again into the same
    folder (a new prefopt recipe) gets new generations, not the old model's cached answers."""
    folder = Path(path)
    files = sorted(f for f in folder.glob("*") if f.suffix in (".safetensors", ".bin", ".gguf")) \
        if folder.is_dir() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _label(path: str) -> str:
    return Path(path).name if os.path.isdir(path) else path


class Generations:
    """Cached answers of one (method, model): appended as they come, reused on the next run."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.key = path, hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.rows = {row["prompt_id"]: row for row in read_rows(path) if row.get("settings") == self.key}
        path.parent.mkdir(parents=True, exist_ok=True)

    def holds(self, prompt: dict) -> bool:
        """An answer to this prompt as it reads now (a prompt edited under the same id is answered again, and a second
        turn after a first answer that changed)."""
        row = self.rows.get(prompt["id"])
        return (row is not None and row.get("instruction", prompt["instruction"]) == prompt["instruction"]
                and row.get("context") == prompt.get("context"))

    def add(self, row: dict) -> None:
        row = {**row, "settings": self.key}
        self.rows[row["prompt_id"]] = row
        append_rows(self.path, [row])


def generate(args: EvalArguments, prompts: list[dict], out: Path, shard: tuple[int, int] | None = None):
    """Every row's answers to `prompts` (cached under out/generations, where every prompt set's answers live), as
    {row name: {prompt id: record}}; with mt_bench_turns 2 a two-turn prompt's second answer is there too, under
    `turn2_id(prompt id)`. With `interleave` every row answers a prompt before any row answers the next, all models
    resident; otherwise the rows are decoded grouped by model, one model resident at a time."""
    timed_in = f"{os.uname().nodename}-{os.getpid()}-{time.time():.0f}"  # this run: wall times compare within it
    options = Options(max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_new_tokens,
                      max_threads=args.max_threads, stop_loops=args.stop_loops,
                      repetition_penalty=args.repetition_penalty)
    mine = [p for i, p in enumerate(prompts) if shard is None or i % shard[1] == shard[0]]
    two_turns = [p for p in mine if args.mt_bench_turns == 2 and len(p.get("turns", ())) > 1]
    rows = plan(args)
    first = {}  # model -> its first row
    for i, (_, _, path) in enumerate(rows):
        first.setdefault(path, i)
    by_model = sorted(rows, key=lambda row: first[row[2]])
    dtype = resolve_dtype(args.dtype, pick_device(args.device))  # concrete: the caches are stamped with it
    caches = {}
    for method, label, path in rows:
        file = out / "generations" / f"{method}--{slug(label)}.jsonl"
        caches[method, label, path] = Generations(
            shard_path(file, *shard) if shard else file,
            {"method": method, "model": path, "weights": weights_stamp(path), "options": asdict(options),
             "dtype": dtype})
    runners = {}

    def runner_for(row: tuple[str, str, str]):
        method, label, path = row
        if row not in runners:
            if not args.interleave:  # the last model goes (with its rows' runners) before the next loads
                for other in [r for r in runners if r[2] != path]:
                    del runners[other]
            engine = next((r.engine for (_, _, p), r in runners.items() if p == path), None)
            runners[row] = METHODS[method](engine or Engine(*load_model(path, dtype=dtype, device=args.device)),
                                           label, options)
            runners[row].answer("Say hello.")  # warm-up: first calls pay for allocation, not decoding
        return runners[row]

    def decode(todo: dict, desc: str) -> None:
        work = [(row, p) for row in by_model for p in todo[row] if not caches[row].holds(p)]
        if args.interleave:  # a stable sort: each prompt's rows one after another, seconds apart
            order = {pid: i for i, pid in enumerate(dict.fromkeys(p["id"] for ps in todo.values() for p in ps))}
            work.sort(key=lambda w: order[w[1]["id"]])
        # models load before the bar starts (interleaved: all of them), so a model that cannot load is one line
        for row in dict.fromkeys(row for row, _ in work[:None if args.interleave else 1]):
            runner_for(row)
        bar = tqdm(work, desc=desc, file=sys.stderr)
        for row, p in bar:
            bar.set_postfix_str(f"{row[0]} · {row[1]}", refresh=False)
            _decode(runner_for(row), caches[row], p, timed_in)

    decode({row: mine for row in rows}, "decoding")
    follow = {row: [second_turn(p, caches[row].rows[p["id"]]["text"]) for p in two_turns] for row in rows}
    if two_turns:
        decode(follow, "decoding · turn 2")
    runners.clear()
    return {f"{method} · {label}": {p["id"]: caches[method, label, path].rows[p["id"]]
                                    for p in mine + follow[method, label, path]} for method, label, path in rows}


def _decode(runner, cache: Generations, p: dict, timed_in: str) -> None:
    """Answers prompt `p` (its `messages` where it has a conversation of its own, as a second turn) into `cache`."""
    prompt = p["messages"] if "context" in p else p["instruction"]
    cache.add({"prompt_id": p["id"], "instruction": p["instruction"], **runner.answer(prompt),
               "timed_in": timed_in, **({"context": p["context"]} if "context" in p else {})})


def mixed_timing(generations: dict[str, dict[str, dict]]) -> dict[str, int]:
    """Per row, how many answers were timed in another run than the sequential answer they are compared with
    (cached rows from an earlier eval): the machine's speed may have changed in between."""
    baseline = next(iter(generations.values()))
    return {name: n for name, gens in list(generations.items())[1:]
            if (n := sum(g.get("timed_in") != baseline[pid].get("timed_in") for pid, g in gens.items()))}


def build_judge(args: EvalArguments, out: Path):
    """The judge, probed before any decoding (the proxy's model: the base model unless named)."""
    return probed_judge(args, out / "judgments" / f"{args.judge}.jsonl", args.base_model, args.device)


def judge_all(args: EvalArguments, judge, prompts: list[dict], generations: dict[str, dict[str, dict]]):
    """Each row's preference over the sequential baseline per prompt (None where the judge failed); stops with
    JudgeError when a row's failures pass args.max_judge_failures."""
    baseline_name = next(iter(generations))
    baseline = generations[baseline_name]
    prefs: dict[str, dict[str, float | None]] = {baseline_name: {p["id"]: 0.5 for p in prompts}}
    for name, gens in list(generations.items())[1:]:
        triples = [(p["instruction"], gens[p["id"]]["text"], baseline[p["id"]]["text"]) for p in prompts]
        rows = judge.prefer_all(triples, desc=f"judge {name}")
        check_failures(rows, args.max_judge_failures, name)
        prefs[name] = {p["id"]: r["preference"] for p, r in zip(prompts, rows)}
    return judge.label, prefs


def blocks_repetition(stored: str | None) -> float | None:
    """Words repeated across an answer's blocks (interpreter.cross_block_repetition); None without two blocks."""
    try:
        return cross_block_repetition([b.text for b in parse(stored).blocks]) if stored else None
    except ValueError:
        return None  # not a stored form (Skeleton-of-Thought's record)


def _mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def metrics(args, prompts, generations, prefs) -> list[dict]:
    baseline = generations[next(iter(generations))]
    rows = []
    for name, gens in generations.items():
        method, model = name.split(" · ", 1)
        ids = [p["id"] for p in prompts]
        judged = [i for i in ids if prefs[name][i] is not None]  # a failed judgment is left out, never a tie
        p = [prefs[name][i] for i in judged]
        lc, lb = [len(gens[i]["text"]) for i in judged], [len(baseline[i]["text"]) for i in judged]
        lo, hi = bootstrap(length_adjusted_win_rate, p, lc, lb, n=args.bootstrap)
        walls = [baseline[i]["wall_time"] / gens[i]["wall_time"] for i in ids]
        # how far another draw of as many prompts could move it: per-prompt ratios spread 0.5-3x on 16 prompts
        wall_lo, wall_hi = bootstrap(geomean, walls, n=args.bootstrap)
        rows.append({
            "method": method, "model": model, "n": len(ids), "judge_failures": len(ids) - len(judged),
            "win_rate": win_rate(p), "length_adjusted_win_rate": length_adjusted_win_rate(p, lc, lb),
            "length_adjusted_ci_low": lo, "length_adjusted_ci_high": hi, "wall_speedup": geomean(walls),
            "wall_speedup_ci_low": wall_lo, "wall_speedup_ci_high": wall_hi,
            "step_speedup": geomean([baseline[i]["steps"] / gens[i]["steps"] for i in ids]),
            "theoretical_speedup": geomean([gens[i]["theoretical_speedup"] or 1.0 for i in ids]),
            "parallelism": sum(gens[i]["parallelism"] or 1.0 for i in ids) / len(ids),
            "tokens_per_s": sum(gens[i]["tokens"] for i in ids) / sum(gens[i]["wall_time"] for i in ids),
            "mean_tokens": sum(gens[i]["tokens"] for i in ids) / len(ids),
            "repaired": sum(bool(gens[i]["repairs"]) for i in ids),
            "cut": sum(gens[i]["finish_reason"] == "length" for i in ids),
            "looped": sum(gens[i]["finish_reason"] == "loop" or bool(gens[i].get("looped")) for i in ids),
            "block_repetition": _mean([blocks_repetition(gens[i].get("stored")) for i in ids])})
    return rows


def evaluate_set(args: EvalArguments, judge, name: str, prompts: list[dict], out: Path,
                 folder: Path) -> tuple[list, str]:
    """One prompt set: generate (cached in out/generations), judge, and leave its table, plot, exports and report
    in `folder` (MT-Bench's two-turn answers in out/mt_bench/model_answer); returns its rows and its table."""
    answers = generate(args, prompts, out)
    generations = {n: {p["id"]: a[p["id"]] for p in prompts} for n, a in answers.items()}  # the first turns
    for row, n in mixed_timing(generations).items():
        print(f"note: {n} of {row}'s answers were timed in another run than the sequential answers they are "
              f"compared with; wall-clock ratios across runs carry the machine's drift (delete {out / 'generations'} "
              "to time every row in one run)", file=sys.stderr)
    label, prefs = judge_all(args, judge, prompts, generations)
    rows = metrics(args, prompts, generations, prefs)
    folder.mkdir(parents=True, exist_ok=True)
    report.write_table(rows, folder, label)
    report.pareto_plot(rows, folder / "pareto.png", label, name)
    report.alpaca_eval_export({n: list(g.values()) for n, g in generations.items()}, {p["id"]: p for p in prompts},
                              folder)
    if args.mt_bench_turns == 2 and any(len(p.get("turns", ())) > 1 for p in prompts):
        for path in report.mt_bench_export(answers, prompts, out / "mt_bench" / "model_answer"):
            print(f"FastChat MT-Bench answers: {path}", file=sys.stderr)
    table = report.table_markdown(rows, label)
    report.html_report(prompts, generations, prefs, folder / "report.html", label, table)
    return rows, table


def main(args: EvalArguments) -> list[dict]:
    """Evaluates every prompt set; returns the rows of all of them (each row names its set)."""
    started = time.time()
    check_arguments(args)
    sets = [args.prompts] if isinstance(args.prompts, str) else list(args.prompts)
    prompts = {name: load_prompts(name, limit) for name, limit in zip(sets, set_limits(args.limit, sets))}
    check_sets(prompts)
    out = Path(args.run_dir) / "eval"  # made once the settings and prompts are accepted: a refusal leaves no folder
    out.mkdir(parents=True, exist_ok=True)
    shard = parse_shard(args.shard) if args.shard else None
    # one run at a time writes eval/ (workers of one run: one lock each, over their own shard files)
    with hold(args.run_dir, "eval.shard-{}-of-{}".format(*shard) if shard else "eval"):
        return _main(args, sets, prompts, shard, out, started)


def set_limits(limit: list[int] | None, sets: list[str]) -> list[int | None]:
    """Each prompt set's limit: none, one for every set, or one for each (ValueError, one line, otherwise)."""
    if not limit:
        return [None] * len(sets)
    if len(limit) == 1:
        return limit * len(sets)
    if len(limit) != len(sets):
        raise ValueError(f"limit: {len(limit)} values for {len(sets)} prompt sets ({', '.join(sets)}): give one "
                         "for every set or one for each")
    return list(limit)


def check_arguments(args: EvalArguments) -> None:
    """Refuses settings no run can use, before anything runs (ValueError, one line)."""
    if args.mt_bench_turns not in (1, 2):
        raise ValueError(f"mt_bench_turns must be 1 or 2, not {args.mt_bench_turns}")
    if not 0 <= args.max_judge_failures <= 1:
        raise ValueError(f"max_judge_failures is a share of a row's pairs, from 0 to 1, not {args.max_judge_failures}")


def _main(args: EvalArguments, sets: list[str], prompts: dict[str, list[dict]], shard: tuple[int, int] | None,
          out: Path, started: float) -> list[dict]:
    # before any decoding, in a shard worker too (the merge judges what it decodes): a judge that cannot answer
    # stops the run now, not after hours of generation
    judge = build_judge(args, out)
    if shard:
        index, count = shard
        done = generate(args, [p for rows in prompts.values() for p in rows], out, (index, count))
        print(f"shard {index}/{count}: {sum(len(g) for g in done.values())} generations in {out / 'generations'}; "
              f"join them with --merge_shards {count}")
        return []
    if args.merge_shards:
        for path in merge(out / "generations", args.merge_shards, {p["id"] for rows in prompts.values() for p in rows}):
            print(f"merged {path}")
    rows, tables = [], []
    for name, set_prompts in prompts.items():
        folder = out if len(sets) == 1 else out / report.set_slug(name)  # one set: its files where they always were
        set_rows, table = evaluate_set(args, judge, name, set_prompts, out, folder)
        rows += [{**r, "prompts": name} for r in set_rows]
        tables.append(f"### {name} ({len(set_prompts)} prompts; {folder})\n\n{table}")
        print(f"{tables[-1]}\nplot: {folder / 'pareto.png'}\nreport: {folder / 'report.html'}\n")
    if len(sets) > 1:
        (out / "results.md").write_text("\n".join(tables))
    (out / "args.json").write_text(json.dumps(asdict(args), indent=1))
    log_results(args.report_to, rows, out, config=asdict(args))
    print(f"({time.time() - started:.0f} s)")
    return rows


DESCRIPTION = "python -m eval --config configs/demo/eval.yaml [--flag value ...]: quality and speed of every method."


def cli(argv: list[str] | None = None) -> int:
    """`python -m eval`: runs `main`; an error a user can cause is one line on stderr and exit status 2."""
    from trl import TrlParser

    return run_cli(TrlParser((EvalArguments,), prog="python -m eval", description=DESCRIPTION), main, argv,
                   errors=(ModelNotFound,))

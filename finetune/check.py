"""python -m finetune.check: does the finetuned PASTA model write tags the interpreter can run as written?

Decodes the dataset's held-out prompts with the engine (PASTA mode, greedy) and reports the share
of answers that needed no repair, the share of prompts whose reference answer has blocks that got
at least one promise, and the mean theoretical speedup of the answers (`interpreter.measure`).
With the tag guard on (the default, as in eval), a draw that would write an invalid tag is
redrawn, and the summary counts the answers it steered; --guard_tags false shows the model's raw
tags. Answers cut by the budget and answers that loop are counted apart: both inflate the speedup
(--stop_loops true ends a loop where it starts); "finished" answers are those the model ended itself.
--samples N --temperature T decodes N sampled answers per prompt instead of the greedy one, and
--against an earlier check's JSON adds the paired difference in speedup (same prompts, same seeds).
Writes every answer and the summary to --out (default <model>/check.json).

  python -m finetune.check --model runs/demo/models/pasta-sft
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from interpreter import (
    LOOPING,
    MAIN,
    Engine,
    Options,
    PastaSyntaxError,
    block_lengths,
    encode,
    load_model,
    measure,
    parse,
    pieces,
    repetition,
    tag_cost,
)
from interpreter.models import DTYPE_HELP, pick_device, resolve_dtype
from pipeline.dataset import load_splits, split
from pipeline.prompts import read_instructions


@dataclass
class CheckArguments:
    model: str = field(default="runs/demo/models/pasta-sft", metadata={"help": "the finetuned model folder"})
    run_dir: str = field(default="runs/demo", metadata={"help": "run folder whose dataset holds the prompts"})
    dataset: str | None = field(default=None, metadata={"help": "instead of <run_dir>/dataset (as in finetune)"})
    split: str = field(default="test", metadata={"help": "held-out split to decode"})
    prompts: str | None = field(default=None, metadata={
        "help": "a JSONL of instructions (`instruction` or `messages`, e.g. data_gen/seeds.jsonl) to decode instead of "
                "the split; any already in the run's dataset is left out, so they stay held out"})
    categories: list[str] = field(default_factory=list, metadata={"help": "--prompts: keep these categories only"})
    limit: int | None = field(default=None, metadata={"help": "decode the first N prompts only (--prompts: a seeded "
                                                             "shuffle first)"})
    max_new_tokens: int = field(default=384, metadata={"help": "token budget of one answer, all threads together"})
    dtype: str | None = field(default=None, metadata={"help": DTYPE_HELP})
    guard_tags: bool = field(default=True, metadata={
        "help": "decode with the engine's tag guard (invalid tags redrawn); --guard_tags false: the model's raw tags"})
    stop_loops: bool = field(default=False, metadata={
        "help": "end a thread whose text falls into a loop (Options.stop_loops): counted as loops_stopped"})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "HF's and vLLM's repetition penalty (1 = off), tags and end tokens spared "
                "(Options.repetition_penalty)"})
    samples: int = field(default=1, metadata={
        "help": "answers per prompt, decoded together (with --temperature: the policy's answers, not only its "
                "greedy one, which preference training may leave unchanged on most prompts)"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy"})
    top_p: float = 1.0
    seed: int = field(default=0, metadata={"help": "sample j of every prompt draws with seed·100003 + j (as "
                                                  "eval.pairs), so two models' samples pair up"})
    out: str | None = field(default=None, metadata={"help": "where to write the answers and summary"})
    against: str | None = field(default=None, metadata={
        "help": "an earlier check's JSON on the same prompts (e.g. the SFT model's): the summary adds the paired "
                "difference in theoretical speedup with a bootstrap 95%% interval"})


def reference_blocks(row: dict) -> int:
    return row["blocks"] if "blocks" in row else len(parse(row["annotated"]).blocks)


def held_out_prompts(args: CheckArguments, dataset) -> list[dict]:
    """--prompts minus every instruction the run's dataset holds (any split), in a seeded order."""
    seen = {row["messages"][-1]["content"] for part in dataset.values() for row in part}
    rows = [{"id": p["id"], "messages": p["messages"], "blocks": None} for p in read_instructions(args.prompts)
            if p["instruction"] not in seen and (not args.categories or p["category"] in args.categories)]
    random.Random(0).shuffle(rows)
    return rows[:args.limit] if args.limit else rows


def one_per_instruction(rows):
    """The first row of each instruction: an instruction answered twice in the data (data_gen's
    answers_per_instruction) is one prompt to the model, checked against its first answer."""
    seen, keep = set(), []
    for i, row in enumerate(rows):
        key = json.dumps(row["messages"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return rows.select(keep)


def ended_itself(answer: dict) -> bool:
    """Finished by the model: neither cut by the budget nor stopped in a loop."""
    return answer["finish_reason"] == "stop" and not answer["looped"]


def paired_difference(answers: list[dict], before: list[dict], draws: int = 2000) -> dict:
    """Theoretical speedup of `answers` minus `before`'s on the prompts (and sample seeds) both hold: the
    mean, a bootstrap 95% interval, and the same over the answers both models ended themselves. Greedy
    answers of models this close differ on a few prompts, so a mean over 10-30 prompts alone says little."""
    mine = {(a["id"], a.get("sample", 0)): a for a in answers}
    pairs = [(mine[k], b) for b in before if (k := (b["id"], b.get("sample", 0))) in mine]
    if not pairs:
        raise ValueError("--against: no prompt in common with this check")

    def stats(subset):
        diffs = [a["theoretical_speedup"] - b["theoretical_speedup"] for a, b in subset]
        if not diffs:
            return None
        rng = random.Random(0)
        means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(draws))
        return {"pairs": len(diffs), "mean": round(sum(diffs) / len(diffs), 4),
                "ci95": [round(means[int(0.025 * draws)], 4), round(means[int(0.975 * draws) - 1], 4)],
                "higher": sum(d > 0 for d in diffs), "lower": sum(d < 0 for d in diffs)}

    ended = [(a, b) for a, b in pairs if ended_itself(a) and ended_itself(b)]
    return {"all": stats(pairs), "finished_both": stats(ended)}


def promise_costs(result, tokenizer) -> dict:
    """An answer's theoretical speedup, each promise's `tokens` against its block's true length (estimated, true),
    and the tokens each promise's tags cost (promise, `<async>`, `</async>`: interpreter.tag_cost)."""
    try:
        doc = parse(result.stored)
    except PastaSyntaxError as err:  # should not happen: the engine stores what it ran, repaired
        result.repairs = [*result.repairs, f"stored form does not parse: {err}"]
        return {"theoretical_speedup": 1.0, "promises": [], "tag_tokens": []}
    estimates = [[b.promise.tokens, n] for b, n in zip(doc.blocks, block_lengths(doc, tokenizer))]
    return {"theoretical_speedup": round(measure(doc, tokenizer).theoretical_speedup, 4), "promises": estimates,
            "tag_tokens": [tag_cost(tokenizer, b.promise.topic, b.promise.tokens)["per_promise"] for b in doc.blocks]}


def estimate_error(answers: list[dict]) -> dict | None:
    """How close the model's promised `tokens` came to its blocks' true lengths (blocks that ended themselves are
    not told apart from cut ones: a cut block makes the estimate look long)."""
    pairs = [p for a in answers for p in a["promises"]]
    if not pairs:
        return None
    errors = [est - true for est, true in pairs]
    return {"promises": len(pairs), "mean_error_tokens": round(sum(errors) / len(errors), 2),
            "mean_abs_error_tokens": round(sum(map(abs, errors)) / len(errors), 2),
            "mean_abs_relative_error": round(sum(abs(e) / t for e, (_, t) in zip(errors, pairs)) / len(pairs), 4),
            "within_10_tokens": round(sum(abs(e) <= 10 for e in errors) / len(errors), 4)}


def fork_points(model, tokenizer, rows) -> dict | None:
    """Teacher-forced on the reference answers: at each token where the reference opens a promise, the probability
    the model gives that token and whether it is the model's greedy choice (a model that never writes a promise
    shows here by how much it misses)."""
    import torch

    from .collator import PastaCollator

    collator = PastaCollator(tokenizer, "annotated", dtype=model.dtype)
    probs, top1 = [], []
    for row in rows:
        if not reference_blocks(row):
            continue
        layout = collator.layout(row)
        main_rows = [i for i, t in enumerate(layout.thread) if t == MAIN]
        starts, k = [], 0  # main's token count where each promise starts (the layout tokenizes piece by piece)
        for piece in pieces(parse(row["annotated"])):
            if piece.thread == MAIN:
                if piece.kind == "promise":
                    starts.append(k)
                k += len(encode(tokenizer, piece.text))
        with torch.no_grad():  # the training forward pass of this one layout (the collator's batch of one)
            logits = model(input_ids=torch.tensor([layout.input_ids]), position_ids=torch.tensor([layout.position_ids]),
                           attention_mask=layout.additive_mask(model.dtype)[None, None]).logits[0].float()
        for start in starts:
            i = main_rows[start - 1] if start else layout.prompt_len - 1
            target = layout.targets[i]
            probs.append(logits[i].softmax(-1)[target].item())
            top1.append(int(logits[i].argmax()) == target)
    if not probs:
        return None
    return {"points": len(probs), "greedy_share": round(sum(top1) / len(top1), 4),
            "mean_probability": round(sum(probs) / len(probs), 4)}


def _mean(values: list, digits: int = 4) -> float | None:
    return round(sum(values) / len(values), digits) if values else None


def check(args: CheckArguments) -> dict:
    where = args.dataset or str(Path(args.run_dir) / "dataset")
    data = load_splits(where)
    if args.prompts:
        rows = held_out_prompts(args, data)
        if not rows:
            raise ValueError(f"{args.prompts}: no prompt left outside {where} (categories: {args.categories or 'all'})")
    else:
        rows = one_per_instruction(split(data, args.split, where))
        if args.limit:
            rows = rows.select(range(min(args.limit, len(rows))))
    dtype = resolve_dtype(args.dtype, pick_device(None))  # concrete, as the summary reports it
    model, tokenizer = load_model(args.model, dtype=dtype)
    engine = Engine(model, tokenizer)
    answers = []
    started = time.perf_counter()
    options = [Options(max_new_tokens=args.max_new_tokens, guard_tags=args.guard_tags, stop_loops=args.stop_loops,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed * 100003 + j,
                       repetition_penalty=args.repetition_penalty)
               for j in range(args.samples)]
    for i, row in enumerate(rows):
        results = engine.generate_many(row["messages"], options)  # one answer: what generate gives
        for j, result in enumerate(results):
            answers.append({"id": row.get("id", i), "sample": j, "reference_blocks": reference_blocks(row),
                            "threads": result.threads, "repetition": round(repetition(result.text), 4),
                            "repairs": result.repairs, "steered": result.steered, "looped": result.looped,
                            "finish_reason": result.finish_reason, **promise_costs(result, tokenizer),
                            "stored": result.stored})
        done = answers[-len(results):]
        print(f"{i + 1}/{len(rows)} threads={[a['threads'] for a in done]} repairs={[len(a['repairs']) for a in done]} "
              f"speedup={[round(a['theoretical_speedup'], 2) for a in done]}", file=sys.stderr, flush=True)
    with_blocks = [a for a in answers if a["reference_blocks"]]  # None: a --prompts row has no reference
    finished = [a for a in answers if ended_itself(a)]
    summary = {
        "model": args.model, "dtype": dtype, "dataset": where,
        "split": args.prompts or args.split, "answers": len(answers),
        "samples": args.samples, "temperature": args.temperature,
        "repair_free_share": round(sum(not a["repairs"] for a in answers) / len(answers), 4),
        # the budget's cut and a stopped loop are repairs too: these are the answers the model ended itself
        "repair_free_share_finished": round(sum(not a["repairs"] for a in finished) / len(finished), 4)
        if finished else None,
        "prompts_with_reference_blocks": len({a["id"] for a in with_blocks}),
        "promise_share": round(sum(a["threads"] > 0 for a in with_blocks) / len(with_blocks), 4)
        if with_blocks else None,
        "guard_tags": args.guard_tags, "stop_loops": args.stop_loops, "repetition_penalty": args.repetition_penalty,
        "steered_answers": sum(a["steered"] > 0 for a in answers),
        "looping_answers": sum(a["repetition"] > LOOPING for a in answers),
        "mean_theoretical_speedup": _mean([a["theoretical_speedup"] for a in answers]),
        # the prompts where the teacher found parallel structure: what the student should fork
        "mean_theoretical_speedup_reference_forks": _mean([a["theoretical_speedup"] for a in with_blocks]),
        "tag_tokens_per_promise": _mean([t for a in answers for t in a["tag_tokens"]], 2),
        "promise_estimate": estimate_error(answers),
        "cut_at_max_new_tokens": sum(a["finish_reason"] == "length" for a in answers),
        "loops_stopped": sum(a["looped"] > 0 for a in answers),
        # a cut answer's blocks ran to the budget: its speedup says how long they ran, not how fast the model is
        "mean_theoretical_speedup_finished": _mean([a["theoretical_speedup"] for a in finished]),
        "reference_fork_points": None if args.prompts else fork_points(model, tokenizer, rows),
        "max_new_tokens": args.max_new_tokens, "wall_time_s": round(time.perf_counter() - started, 1)}
    if args.against:
        before = json.loads(Path(args.against).read_text(encoding="utf-8"))["answers"]
        summary["against"] = {"file": args.against, **paired_difference(answers, before)}
    out = Path(args.out or Path(args.model) / "check.json")
    out.write_text(json.dumps({"summary": summary, "answers": answers}, indent=1, ensure_ascii=False) + "\n")
    return summary


def main(argv=None) -> int:
    from trl import TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    parser = TrlParser((CheckArguments,), prog="python -m finetune.check", description=__doc__)
    return cli(parser, lambda args: print(json.dumps(check(args), indent=1)), argv, errors=(ModelNotFound,))


if __name__ == "__main__":
    sys.exit(main())

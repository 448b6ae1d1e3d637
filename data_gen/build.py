"""The stage end to end: source records, answers, teacher, filters, dataset."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from interpreter import render
from pipeline import runfolder
from pipeline.errors import PipelineError
from pipeline.shards import parse_shard

from . import shards, writer
from .answers import fill_answers
from .filters import check_answer, check_reply, keep_share
from .promises import Measured
from .sources import load_records, with_draws
from .structural import StructuralTeacher


class DataGenError(PipelineError, RuntimeError):
    """The stage cannot produce a dataset; the message says why."""


def student_tokenizer(cfg):
    from interpreter import add_tag_tokens, load_tokenizer

    tokenizer = load_tokenizer(cfg.student)
    if cfg.tag_tokens:
        add_tag_tokens(tokenizer)
    return tokenizer


def make_teacher(cfg, tokenizer, cache_dir: Path):
    if cfg.teacher == "openai":
        from .openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg, cache_dir)
    return StructuralTeacher(tokenizer, cfg.tokens_granularity, cfg.min_blocks, cfg.max_blocks)


def make_row(record, kept: Measured, teacher: str) -> dict:
    doc = kept.doc
    return {"id": record.id, "messages": record.messages, "annotated": render(doc), "stripped": doc.stripped,
            "source": record.source, "teacher": teacher, "blocks": len(doc.blocks), **kept.costs.as_dict()}


def annotate_records(cfg, records, cache_dir: Path) -> tuple[list[dict], Counter, Counter, object]:
    """Answers, teacher replies and per-example filters: (candidate rows in record order, rule and fix counts,
    answer counts, the teacher). The share filter and the split need every row, so `build` applies them after."""
    counts: Counter = Counter()
    answers = fill_answers(records, cfg, cache_dir)
    counts["answer-truncated"] += answers.pop("answer-truncated", 0)
    counts["fix:answer-trimmed"] += answers.pop("answer-trimmed", 0)
    ready = []
    for record in records:
        rule = "answer-truncated" if record.answer is None else check_answer(record.answer, cfg.max_repetition)
        if rule is None:
            ready.append(record)
        elif rule != "answer-truncated":  # counted by fill_answers
            counts[rule] += 1
    tokenizer = student_tokenizer(cfg)
    teacher = make_teacher(cfg, tokenizer, cache_dir)
    replies = teacher.annotate_all(ready)
    rows = []
    for record in ready:
        verdict = check_reply(replies[record.id], record.answer, tokenizer, cfg.tokens_granularity, cfg.min_blocks,
                              cfg.max_blocks, cfg.max_block_repetition)
        counts.update(f"fix:{fix}" for fix in verdict.fixes)
        teacher.record_verdict(record, verdict.rule)
        if verdict.rule:
            counts[verdict.rule] += 1
            if verdict.detail:
                counts[f"validator:{verdict.detail.split(':', 1)[0]}"] += 1
            continue
        rows.append(make_row(record, verdict.kept, teacher.name))
    return rows, counts, answers, teacher


def build(cfg, command: str = "python -m data_gen") -> dict:
    """Builds <run folder>/dataset from the config; returns the stats it wrote. With --shard i/n, annotates
    only that worker's records into its shard file; with --merge_shards n, builds from the n shard files.
    Raises RunFolderBusy at once when another run holds the run folder (or, for a worker, its shard)."""
    cfg.check()
    # workers of one run folder run side by side, each with its own caches and shard file: one lock each
    name = "data_gen.shard-{}-of-{}".format(*parse_shard(cfg.shard)) if cfg.shard else "data_gen"
    with runfolder.hold(cfg.run_dir, name):
        if not cfg.shard:
            note = writer.recover(cfg.dataset_dir)
            if note:
                print(note, file=sys.stderr)
        return _build(cfg, command)


def _build(cfg, command: str) -> dict:
    began = time.perf_counter()
    # every worker and the merge read and order the same records, so `i::n` is the same split everywhere
    records, counts = load_records(cfg.source, cfg.source_format, cfg.source_split, cfg.max_examples,
                                   cfg.shuffle_seed, cfg.source_categories)
    records = with_draws(records, cfg.answers_per_instruction)
    if cfg.shard:
        index, count = parse_shard(cfg.shard)
        mine = records[index::count]
        rows, tally, answers, teacher = annotate_records(cfg, mine, shards.cache_dir(cfg, index, count))
        path = shards.write(cfg, index, count, [r.id for r in mine], rows, tally, answers, teacher)
        return {"shard": f"{index}/{count}", "records": len(mine), "candidates": len(rows), "path": str(path),
                "seconds": round(time.perf_counter() - began, 1)}
    if cfg.merge_shards:
        rows, answers, teacher_name, summary = shards.merge(cfg, records, counts)
    else:
        rows, tally, answers, teacher = annotate_records(cfg, records, cfg.cache_path)
        counts.update(tally)
        teacher_name, summary = teacher.name, teacher.summary()
    forked = [r for r in rows if r["blocks"]]
    kept_plain, dropped = keep_share(forked, sorted((r for r in rows if not r["blocks"]), key=lambda r: r["id"]),
                                     cfg.no_parallel_share)
    counts["no-parallelism-over-share"] += len(dropped)
    rows = forked + kept_plain
    read = counts["read"]
    if not rows:
        rejected = {k: v for k, v in counts.items() if v and k != "read"}
        raise DataGenError(f"no example survived the filters (read {read}; {rejected})")
    train, test = writer.split(rows, cfg.test_size)
    extra = {"run": Path(cfg.run_dir).name, "source": cfg.source, "records": read, "teacher": teacher_name,
             "student": cfg.student, "tag_tokens": cfg.tag_tokens, "tokens_granularity": cfg.tokens_granularity,
             "answers": dict(answers), "teacher_summary": summary}
    if cfg.teacher == "openai":
        extra["prompt_version"] = summary["prompt_version"]
    stats = writer.stats_report(rows, train, test, counts, extra)
    stats["seconds"] = round(time.perf_counter() - began, 1)
    stats["config"] = cfg.as_dict()
    writer.write(cfg.dataset_dir, train, test, stats, command)
    if cfg.push_to_hub:
        print(f"data_gen: pushing to the hub as {cfg.hub_repo_id}", file=sys.stderr)
        writer.push(cfg.dataset_dir, cfg.hub_repo_id, cfg.hub_private)
    return stats

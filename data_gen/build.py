"""The stage end to end: source records, answers, teacher, filters, dataset."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from interpreter import measure, parse

from . import writer
from .answers import fill_answers
from .filters import check_answer, check_reply, keep_share
from .sources import load_records
from .structural import StructuralTeacher


class DataGenError(RuntimeError):
    """The stage cannot produce a dataset; the message says why."""


def student_tokenizer(cfg):
    from interpreter import add_tag_tokens, load_tokenizer

    tokenizer = load_tokenizer(cfg.student)
    if cfg.tag_tokens:
        add_tag_tokens(tokenizer)
    return tokenizer


def make_teacher(cfg, tokenizer):
    if cfg.teacher == "openai":
        from .openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg, cfg.cache_path)
    return StructuralTeacher(tokenizer, cfg.tokens_granularity, cfg.min_blocks, cfg.max_blocks)


def make_row(record, annotated: str, teacher: str, tokenizer) -> dict:
    doc = parse(annotated)
    return {"id": record.id, "messages": record.messages, "annotated": annotated, "stripped": doc.stripped,
            "source": record.source, "teacher": teacher, "blocks": len(doc.blocks),
            **measure(doc, tokenizer).as_dict()}


def build(cfg, command: str = "python -m data_gen") -> dict:
    """Builds <run folder>/dataset from the config; returns the stats it wrote."""
    cfg.check()
    began = time.perf_counter()
    records, counts = load_records(cfg.source, cfg.source_format, cfg.source_split, cfg.max_examples,
                                   cfg.shuffle_seed, cfg.source_categories)
    read = counts["read"]
    answers = fill_answers(records, cfg, cfg.cache_path)
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
    teacher = make_teacher(cfg, tokenizer)
    replies = teacher.annotate_all(ready)
    forked, plain = [], []
    for record in ready:
        verdict = check_reply(replies[record.id], record.answer, tokenizer, cfg.tokens_granularity, cfg.min_blocks,
                              cfg.max_blocks)
        counts.update(f"fix:{fix}" for fix in verdict.fixes)
        if verdict.rule:
            counts[verdict.rule] += 1
            if verdict.detail:
                counts[f"validator:{verdict.detail.split(':', 1)[0]}"] += 1
            continue
        row = make_row(record, verdict.annotated, teacher.name, tokenizer)
        (forked if row["blocks"] else plain).append(row)
    kept_plain, dropped = keep_share(forked, sorted(plain, key=lambda r: r["id"]), cfg.no_parallel_share)
    counts["no-parallelism-over-share"] += len(dropped)
    rows = forked + kept_plain
    if not rows:
        rejected = {k: v for k, v in counts.items() if v and k != "read"}
        raise DataGenError(f"no example survived the filters (read {read}; {rejected})")
    train, test = writer.split(rows, cfg.test_size)
    extra = {"run": Path(cfg.run_dir).name, "source": cfg.source, "records": read, "teacher": teacher.name,
             "student": cfg.student, "tag_tokens": cfg.tag_tokens, "tokens_granularity": cfg.tokens_granularity,
             "answers": dict(answers), "teacher_summary": teacher.summary()}
    if cfg.teacher == "openai":
        extra["prompt_version"] = teacher.summary()["prompt_version"]
    stats = writer.stats_report(rows, train, test, counts, extra)
    stats["seconds"] = round(time.perf_counter() - began, 1)
    stats["config"] = cfg.as_dict()
    writer.write(cfg.dataset_dir, train, test, stats, command)
    if cfg.push_to_hub:
        print(f"data_gen: pushing to the hub as {cfg.hub_repo_id}", file=sys.stderr)
        writer.push(cfg.dataset_dir, cfg.hub_repo_id, cfg.hub_private)
    return stats

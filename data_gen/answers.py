"""Answers for instructions that come without one (the seed set): the base model writes them through
the interpreter's sequential mode, batched for throughput, and every batch is cached as it ends."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipeline.jsonl import JsonlCache, key_of
from pipeline.runfolder import slug


def trim_cut_answer(text: str) -> str | None:
    """An answer cut by the length cap, trimmed back to its last full line (or sentence); None when
    less than 40% of it would be left."""
    cut = text.rfind("\n")
    if cut < 0:
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
        cut = ends[-1] if ends else -1
    kept = text[:cut].rstrip() if cut > 0 else ""
    return kept if len(kept) >= 0.4 * len(text) else None


def fill_answers(records, cfg, cache_dir: Path) -> Counter:
    """Gives every record without an answer the answer model's answer; returns counts of what happened.
    Records whose answer was cut and cannot be trimmed get answer None (the caller drops them)."""
    todo = [r for r in records if r.answer is None]
    counts: Counter = Counter()
    if not todo:
        return counts
    settings = (cfg.answer_model, cfg.answer_max_new_tokens, cfg.answer_temperature, cfg.answer_top_p)
    # a further draw's key names it; the first draw's is the key of a single answer, which a larger set reuses
    keys = {r.id: key_of(r.messages, *settings, *([r.draw] if r.draw else [])) for r in todo}
    cache = JsonlCache(cache_dir / f"answers-{slug(cfg.answer_model)}.jsonl")
    missing = [r for r in todo if keys[r.id] not in cache]
    counts["answers_from_cache"] = len(todo) - len(missing)
    counts["answers_generated"] = len(missing)
    if missing:
        _generate(missing, keys, cache, cfg)
    for r in todo:
        entry = cache.get(keys[r.id])
        r.answer = entry["text"]
        if entry["finish_reason"] == "length":
            r.answer = trim_cut_answer(r.answer)
            counts["answer-trimmed" if r.answer is not None else "answer-truncated"] += 1
    return counts


def _generate(missing, keys, cache, cfg) -> None:
    from interpreter import Engine, Options, load_model

    model, tokenizer = load_model(cfg.answer_model, dtype=cfg.answer_dtype)
    engine = Engine(model, tokenizer)
    # a batch runs until its longest answer ends: answers of one kind (short facts, lists) and prompts of
    # similar length share a batch, so finished rows and left padding waste little
    missing = sorted(missing, key=lambda r: (r.kind, len(engine.prompt_ids(r.messages))))
    options = Options(max_new_tokens=cfg.answer_max_new_tokens, temperature=cfg.answer_temperature,
                      top_p=cfg.answer_top_p, seed=cfg.shuffle_seed)
    size = cfg.answer_batch_size
    with tqdm(total=len(missing), desc=f"answers {cfg.answer_model}", unit="answer", dynamic_ncols=True) as bar:
        for start in range(0, len(missing), size):
            batch = missing[start:start + size]
            results = engine.generate_batch([r.messages for r in batch], options, batch_size=size)
            for record, result in zip(batch, results):
                cache.put(keys[record.id], id=record.id, text=result.text, finish_reason=result.finish_reason,
                          tokens=result.tokens)
            bar.update(len(batch))

"""The dataset on disk: a `save_to_disk` DatasetDict (train/test) with the same rows as JSONL, stats.json,
a histogram of theoretical speedup and a dataset card, swapped into place only once complete."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from pipeline.dataset import HUB_ID
from pipeline.runfolder import writing

from .config import SEED_LICENSE
from .filters import FIXES, RULES
from .sources import instruction_id

COLUMNS = {
    "id": "stable hash of the prompt and the original answer (`-k` added: the k-th further answer drawn)",
    "messages": "the prompt conversation, without the answer (list of {role, content})",
    "annotated": "the answer in Pasta-Lang's stored form, tags in place (what PASTA-SFT trains on)",
    "stripped": "the original answer, interpreter.strip(annotated) (what the Baseline-SFT control trains on)",
    "source": "where the record came from",
    "teacher": "who annotated it",
    "blocks": "async blocks in the answer (0: kept to teach when not to fork)",
    "sequential_tokens": "tokens of the stripped answer under the student's tokenizer",
    "parallel_steps": "decoding steps of the annotated answer, every thread one token a step",
    "total_tokens": "every token of the annotated answer, tags included",
    "theoretical_speedup": "sequential_tokens / parallel_steps",
    "parallelism": "total_tokens / parallel_steps",
}


def features():
    from datasets import Features, List, Value

    ints = {k: Value("int32") for k in ("blocks", "sequential_tokens", "parallel_steps", "total_tokens")}
    return Features({"id": Value("string"), "messages": List({"role": Value("string"), "content": Value("string")}),
                     "annotated": Value("string"), "stripped": Value("string"), "source": Value("string"),
                     "teacher": Value("string"), **ints, "theoretical_speedup": Value("float64"),
                     "parallelism": Value("float64")})


def split(rows: list[dict], test_size: float) -> tuple[list[dict], list[dict]]:
    """Test rows are those with the smallest ids (ids are hashes), taken from the answers with blocks and those
    without in proportion: stable as the set grows, and a test split that forks as often as the whole set (the
    answers without blocks that `keep_share` keeps are the smallest ids too, and took the test split over)."""
    n_test = round(len(rows) * test_size)
    if test_size > 0 and len(rows) >= 2:
        n_test = min(max(n_test, 1), len(rows) - 1)
    rows = sorted(rows, key=lambda r: r["id"])
    forked, plain = [r for r in rows if r["blocks"]], [r for r in rows if not r["blocks"]]
    n_plain = min(round(n_test * len(plain) / max(len(rows), 1)), len(plain))
    n_forked = min(n_test - n_plain, len(forked))
    train, test = forked[n_forked:] + plain[n_plain:], forked[:n_forked] + plain[:n_plain]
    # an instruction answered more than once (answers_per_instruction) is tested on all its answers, none trained
    held = {instruction_id(r["id"]) for r in test}
    tested = [instruction_id(r["id"]) in held for r in train]
    return [r for r, t in zip(train, tested) if not t], test + [r for r, t in zip(train, tested) if t]


def speedup_stats(rows: list[dict]) -> dict:
    s = sorted(r["theoretical_speedup"] for r in rows)
    forked = [r["theoretical_speedup"] for r in rows if r["blocks"]]
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) >= 2 else [s[0]] * 9
    return {"mean": round(statistics.fmean(s), 4), "mean_with_blocks": round(statistics.fmean(forked), 4)
            if forked else None, "median": round(statistics.median(s), 4), "p10": round(q[0], 4),
            "p90": round(q[-1], 4), "min": round(s[0], 4), "max": round(s[-1], 4)}


def stats_report(rows, train, test, counts: Counter, extra: dict) -> dict:
    blocks = Counter(r["blocks"] for r in rows)
    return {
        **extra,
        "kept": len(rows), "train": len(train), "test": len(test),
        "with_blocks": sum(n for b, n in blocks.items() if b), "without_blocks": blocks[0],
        "rejected": {rule: counts[rule] for rule in RULES},
        "fixed": {fix: counts[f"fix:{fix}"] for fix in FIXES},
        "invalid_by_validator_rule": {k.split(":", 1)[1]: v for k, v in sorted(counts.items())
                                      if k.startswith("validator:")},
        "theoretical_speedup": speedup_stats(rows),
        "blocks_per_answer": {str(b): blocks[b] for b in sorted(blocks)},
    }


def histogram(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [r["theoretical_speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=min(30, max(5, len(values) // 5)), color="#4c72b0")
    mean = statistics.fmean(values)
    ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.2f}")
    ax.set(xlabel="theoretical speedup (sequential tokens / parallel steps)", ylabel="examples", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def card_data(stats: dict):
    """The dataset card's metadata: license (`--hub_license`, or the seed set's apache-2.0), the source dataset when
    it is a hub id, the task, the language and the size."""
    from huggingface_hub import DatasetCardData

    source, cfg = stats["source"], stats.get("config", {})
    hub_source = HUB_ID.fullmatch(source) and not Path(source).exists()
    return DatasetCardData(
        pretty_name=f"PASTA annotated answers ({stats['run']})", language=["en"],
        license=cfg.get("hub_license") or (SEED_LICENSE if source == "seed" else None),
        source_datasets=[source] if hub_source else ["original"] if source == "seed" else None,
        task_categories=["text-generation"], annotations_creators=["machine-generated"],
        size_categories=[next((name for top, name in SIZES if stats["kept"] < top), "1M<n<10M")],
        tags=["pasta", "pasta-lang", "parallel-decoding", "synthetic"])


def card(stats: dict, command: str):
    """The dataset card (a huggingface_hub DatasetCard): `card_data` above the stats tables."""
    from huggingface_hub import DatasetCard

    s = stats["theoretical_speedup"]
    rules = "\n".join(f"| `{k}` | {v} | {RULES[k]} |" for k, v in stats["rejected"].items())
    fixes = "\n".join(f"| `{k}` | {v} | {FIXES[k]} |" for k, v in stats["fixed"].items())
    cols = "\n".join(f"| `{k}` | {v} |" for k, v in COLUMNS.items())
    teacher_note = ("The structural teacher is a deterministic, rule-based annotator, not a language model: it forks "
                    "list items, steps, sections and self-contained paragraphs by their layout, not by their meaning."
                    if stats["teacher"].startswith("structural") else
                    "The teacher is a language model behind an OpenAI-compatible endpoint, prompted with the "
                    f"Pasta-Lang rules and 7 hand-annotated examples (prompt version {stats.get('prompt_version')}).")
    return DatasetCard(f"""---
{card_data(stats).to_yaml()}
---

# PASTA annotated answers: `{stats['run']}`

Answers annotated with Pasta-Lang tags (`<promise/>`, `<async>`, `<sync/>`) for training a model to
decode the independent parts of its answer in parallel (Jin et al., "Learning to Keep a Promise", ICML 2025).

- Source: `{stats['source']}` ({stats['records']} records read)
- Teacher: **{stats['teacher']}**. {teacher_note}
- Student tokenizer (promise lengths, cost measures): `{stats['student']}`, tag pieces as added tokens:
  {stats['tag_tokens']}; promise lengths rounded up to {stats['tokens_granularity']} tokens
- Kept: {stats['kept']} (train {stats['train']}, test {stats['test']}); {stats['with_blocks']} with blocks,
  {stats['without_blocks']} without
- Theoretical speedup: mean {s['mean']}, mean over answers with blocks {s['mean_with_blocks']},
  median {s['median']}, p10 {s['p10']}, p90 {s['p90']}

![theoretical speedup](speedup_hist.png)

Built with `{command}`.

## Columns

| column | meaning |
| --- | --- |
{cols}

## Filters

Each rejected example is counted under the first rule it breaks.

| rule | rejected | meaning |
| --- | --- | --- |
{rules}

| fix | examples | meaning |
| --- | --- | --- |
{fixes}

## Loading

```python
from pipeline.dataset import load_splits
ds = load_splits("runs/{stats['run']}")  # a DatasetDict with train and test
```
""")


def _jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def backup_path(out: Path) -> Path:
    """Where `write` moves the published dataset while it swaps the new one in."""
    return out.parent / f".{out.name}.old"


def recover(out: Path) -> str | None:
    """Puts back a dataset that a run stopped between the two renames of `write` left only as its backup, and
    removes temporary folders of stopped runs; returns a line saying what was restored, or None. Call it
    holding the run folder's lock."""
    old, note = backup_path(out), None
    if old.is_dir() and not out.exists():
        with writing(out):
            os.replace(old, out)
        note = f"data_gen: restored {out} from {old.name}, left by a run stopped while it published"
    for leftover in out.parent.glob(f".{out.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return note


def _dataset(rows: list[dict], feats):
    from datasets import Dataset

    if rows:
        return Dataset.from_list(rows, features=feats)
    return Dataset.from_dict({c: [] for c in feats}, features=feats)  # from_list finds no columns in no rows


def write(out: Path, train: list[dict], test: list[dict], stats: dict, command: str) -> None:
    """Writes everything to a new temporary folder beside `out`, then swaps it in; call it holding the run
    folder's lock. Raises WriteError naming the file it could not write; the published dataset stays as it was."""
    from datasets import DatasetDict

    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        feats = features()
        splits = {"train": train, "test": test}
        with writing(tmp):
            # an empty split (--test_size 0, a one-row set) is written as one empty shard: with none, datasets
            # cannot load it back
            DatasetDict({k: _dataset(rows, feats) for k, rows in splits.items()}).save_to_disk(
                str(tmp), num_shards={k: 1 for k, rows in splits.items() if not rows})
        for rows, name in ((train, "train.jsonl"), (test, "test.jsonl")):
            with writing(tmp / name):
                _jsonl(rows, tmp / name)
        with writing(tmp / "stats.json"):
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with writing(tmp / "speedup_hist.png"):
            histogram(train + test, tmp / "speedup_hist.png", f"{stats['run']}: {stats['teacher']}")
        with writing(tmp / "README.md"):
            (tmp / "README.md").write_text(str(card(stats, command)), encoding="utf-8")
        old = backup_path(out)
        with writing(out):
            if out.exists():
                os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                if old.exists() and not out.exists():
                    os.replace(old, out)
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
        raise
    shutil.rmtree(old, ignore_errors=True)


# what datasets' push_to_hub writes into the README's YAML header: how the hub finds and describes the parquet files
HUB_KEYS = ("configs", "dataset_info")


def merged_card(local, hub):
    """`local` (our DatasetCard) with the `configs` and `dataset_info` of `hub` (the card push_to_hub left)."""
    from huggingface_hub import DatasetCard

    card = DatasetCard(str(local))
    for key in HUB_KEYS:
        if key in hub.data:
            card.data[key] = hub.data[key]
    return card


def push(out: Path, repo_id: str, private: bool) -> None:
    """Pushes the dataset (parquet, through datasets' push_to_hub), then in one commit its card, stats.json (which
    finetune reads from a hub dataset) and the histogram. The card keeps the `configs` and `dataset_info` that
    push_to_hub wrote into the README's metadata (where the splits' files are and what they hold)."""
    from datasets import load_from_disk
    from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, hf_hub_download

    load_from_disk(str(out)).push_to_hub(repo_id, private=private)
    hub = DatasetCard.load(hf_hub_download(repo_id, "README.md", repo_type="dataset"))
    card = merged_card(DatasetCard.load(out / "README.md"), hub)
    files = [CommitOperationAdd("README.md", str(card).encode())]
    files += [CommitOperationAdd(name, str(out / name)) for name in ("stats.json", "speedup_hist.png")]
    HfApi().create_commit(repo_id, files, commit_message="PASTA dataset card, stats.json and histogram",
                          repo_type="dataset")

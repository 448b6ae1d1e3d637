"""Many workers, one dataset: `--shard i/n` annotates every n-th source record (from the i-th on) with its
own caches, into `<run_dir>/dataset-shards/records.shard-i-of-n.jsonl`; `--merge_shards n` joins the n files,
each record exactly once, and hands the rows to the same share filter, split and writer a single build uses.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.runfolder import publish
from pipeline.shards import ShardError, shard_path

# flags that change how a worker runs, not which rows it writes (or that only the merge applies)
LOCAL = {"run_dir", "cache_dir", "shard", "merge_shards", "answer_batch_size", "answer_dtype", "openai_base_url",
         "openai_api_key_env", "openai_concurrency", "openai_timeout", "openai_max_retries", "openai_backoff",
         "openai_max_backoff", "openai_reply_tries", "no_parallel_share", "test_size", "push_to_hub", "hub_repo_id",
         "hub_license", "hub_private"}


def records_path(cfg, index: int, count: int) -> Path:
    # beside dataset/, not in it: the writer swaps dataset/ wholesale
    return shard_path(Path(cfg.run_dir) / "dataset-shards" / "records.jsonl", index, count)


def cache_dir(cfg, index: int, count: int) -> Path:
    """A worker's own caches: no two workers append to one file."""
    return cfg.cache_path / f"shard-{index}-of-{count}"


def settings(cfg) -> dict:
    return {k: v for k, v in cfg.as_dict().items() if k not in LOCAL}


def write(cfg, index: int, count: int, ids: list[str], rows: list[dict], counts: Counter, answers: Counter,
          teacher) -> Path:
    """Writes one worker's candidate rows and tallies, complete or not at all (temporary file, then rename)."""
    path = records_path(cfg, index, count)
    by_id = {r["id"]: r for r in rows}
    header = {"shard": [index, count], "settings": settings(cfg), "records": len(ids), "counts": dict(counts),
              "answers": dict(answers), "teacher": teacher.name, "teacher_summary": teacher.summary()}
    lines = [header] + [{"id": rid, "row": by_id.get(rid)} for rid in ids]  # row None: rejected, in counts
    return publish(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


def _read(path: Path, name: str) -> tuple[list[dict], list[dict]]:
    """(headers, record lines) of one shard file."""
    headers, lines = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise ShardError(f"{name}: {path}:{n} is not JSON (a partial copy?); copy it again or rerun that "
                             "shard") from None
        (headers if "shard" in entry else lines).append(entry)
    return headers, lines


def _add_summary(total: dict, part: dict) -> None:
    """Sums the workers' teacher summaries: counts add up, names are the same in all."""
    for k, v in part.items():
        if isinstance(v, dict):  # errors by kind
            both = Counter(total.get(k, {}))
            both.update(v)
            total[k] = dict(sorted(both.items()))
        elif isinstance(v, int) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total.setdefault(k, v)


def merge(cfg, records, counts: Counter) -> tuple[list[dict], Counter, str, dict]:
    """Joins the n shards of these records: (candidate rows in source order, answer counts, teacher name,
    teacher summary); `counts` gains every shard's tallies. Raises ShardError on a gap or an overlap."""
    count = cfg.merge_shards
    owner = {r.id: i % count for i, r in enumerate(records)}  # the split every worker made
    mine, seen, found = settings(cfg), {}, {}
    answers, summary, teacher = Counter(), {}, None
    for index in range(count):
        path, name = records_path(cfg, index, count), f"shard {index}/{count}"
        if not path.exists():
            raise ShardError(f"{name}: {path} is missing (that worker has not finished); run python -m data_gen "
                             f"with the same flags and --shard {index}/{count}")
        headers, lines = _read(path, name)
        if not headers or headers[0]["shard"] != [index, count]:
            was = f"--shard {'/'.join(map(str, headers[0]['shard']))}" if headers else "no worker"
            raise ShardError(f"{name}: {path} was written by {was}, not --shard {index}/{count}; rerun that shard")
        head = headers[0]
        for k in sorted(mine.keys() | head["settings"].keys()):
            if mine.get(k) != head["settings"].get(k):
                raise ShardError(f"{name}: {path} was built with --{k} {head['settings'].get(k)!r}, this merge has "
                                 f"{mine.get(k)!r}; merge with the workers' flags or rerun that shard")
        for line in lines:
            rid = line["id"]
            if rid in seen:
                raise ShardError(f"{name}: {path} holds record {rid} again (overlap: it is already in shard "
                                 f"{seen[rid]}/{count}); rerun that shard")
            if owner.get(rid) != index:
                where = "is not in this source" if rid not in owner else f"belongs to shard {owner[rid]}/{count}"
                raise ShardError(f"{name}: {path} holds record {rid}, which {where}; were the workers' inputs "
                                 "different? rerun that shard")
            seen[rid] = index
            found[rid] = line["row"]
        if len(headers) > 1:
            raise ShardError(f"{name}: {path} was written {len(headers)} times over; rerun that shard")
        lacking = [rid for rid, i in owner.items() if i == index and rid not in seen]
        if lacking:
            raise ShardError(f"{name}: {path} is incomplete ({len(lacking)} of its records missing, e.g. "
                             f"{lacking[0]}); rerun that shard")
        counts.update(head["counts"])
        answers.update(head["answers"])
        _add_summary(summary, head["teacher_summary"])
        teacher = head["teacher"]
    rows = [found[r.id] for r in records if found[r.id] is not None]
    return rows, answers, teacher, summary

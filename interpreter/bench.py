"""Engine benchmark: replay stored sequences sequentially and asynchronously, measure wall clock.

Replay forces each stored sequence through the engine on exactly the schedule decoding it
would have had, so any model (random weights included) can be measured without depending on
what it would write. Efficiency = wall-clock speedup / theoretical speedup: how much of the
speedup the tags promise the engine delivers.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from .cost import measure
from .engine import PHASES, Engine
from .parser import parse


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def load_sequences(path: str, limit: int | None = None) -> list[dict]:
    """JSONL rows with a stored form (`annotated` or `stored`) and a prompt (`messages`, `prompt` or `instruction`)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            stored = row.get("annotated", row.get("stored"))
            prompt = row.get("messages") or row.get("prompt") or row.get("instruction")
            if stored is None or prompt is None:
                raise ValueError(f"{path}:{n}: a row needs 'annotated' (or 'stored') and 'messages' "
                                 "(or 'prompt'/'instruction')")
            parse(stored)
            rows.append({"id": row.get("id", str(n)), "prompt": prompt, "stored": stored})
            if limit and len(rows) >= limit:
                break
    return rows


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _timed(fn, repeats: int):
    best = None
    for _ in range(repeats):
        result = fn()
        if best is None or result.wall_time < best.wall_time:
            best = result
    return best


def run(engine: Engine, rows: list[dict], repeats: int = 3, warmup: int = 2, progress=True) -> dict:
    """Replays each row in both modes (best of `repeats` each) and compares with model.generate's speed."""
    from tqdm import tqdm

    for row in rows[:warmup]:
        engine.replay(row["prompt"], row["stored"])
        engine.replay(row["prompt"], row["stored"], mode="sequential")
    per = []
    phases = {"sequential": _Phases(engine), "pasta": _Phases(engine)}
    for row in tqdm(rows, desc="bench", disable=not progress):
        costs = measure(row["stored"], engine.tokenizer)
        with phases["sequential"]:
            seq = _timed(lambda r=row: engine.replay(r["prompt"], r["stored"], mode="sequential"), repeats)
        with phases["pasta"]:
            par = _timed(lambda r=row: engine.replay(r["prompt"], r["stored"]), repeats)
        wall = seq.wall_time / par.wall_time
        per.append({"id": row["id"], "sequential_tokens": costs.sequential_tokens,
                    "parallel_steps": costs.parallel_steps, "blocks": len(parse(row["stored"]).blocks),
                    "theoretical_speedup": round(costs.theoretical_speedup, 4),
                    "engine_steps": [seq.steps, par.steps],
                    "wall_sequential_s": round(seq.wall_time, 4), "wall_pasta_s": round(par.wall_time, 4),
                    "wall_speedup": round(wall, 4), "efficiency": round(wall / costs.theoretical_speedup, 4),
                    "sequential_tokens_per_s": round(sum(seq.thread_tokens) / seq.wall_time, 2)})
    return {"machine": machine(), "sequences": per, "summary": summarize(per),
            "per_step_ms": {mode: p.per_step_ms() for mode, p in phases.items()},
            "generate": compare_with_generate(engine, rows[: min(len(rows), 8)], repeats)}


class _Phases:
    """The engine's time per phase of a step (interpreter.engine.PHASES), summed over what runs inside."""

    def __init__(self, engine: Engine):
        self.engine, self.steps, self.seconds = engine, 0, dict.fromkeys(PHASES, 0.0)

    def __enter__(self):
        self.start_steps, self.start = self.engine.steps, dict(self.engine.timing)

    def __exit__(self, *exc):
        self.steps += self.engine.steps - self.start_steps
        for k in self.seconds:
            self.seconds[k] += self.engine.timing[k] - self.start[k]

    def per_step_ms(self) -> dict:
        out = {k: round(1000 * v / max(self.steps, 1), 3) for k, v in self.seconds.items()}
        out["forward_share"] = round(self.seconds["forward"] / max(sum(self.seconds.values()), 1e-9), 4)
        return out


def summarize(per: list[dict]) -> dict:
    def block(rows):
        return {"n": len(rows), "geomean_wall_speedup": round(geomean([r["wall_speedup"] for r in rows]), 4),
                "geomean_theoretical_speedup": round(geomean([r["theoretical_speedup"] for r in rows]), 4),
                "geomean_efficiency": round(geomean([r["efficiency"] for r in rows]), 4)}
    return {"all": block(per), "theoretical_at_least_1.5": block([r for r in per if r["theoretical_speedup"] >= 1.5])}


@torch.inference_mode()
def compare_with_generate(engine: Engine, rows: list[dict], repeats: int) -> dict:
    """Sequential mode's tokens/s against model.generate drawing the same number of tokens."""
    ours, theirs = [], []
    for row in rows:
        seq = _timed(lambda r=row: engine.replay(r["prompt"], r["stored"], mode="sequential"), repeats)
        n = sum(seq.thread_tokens)
        ids = torch.tensor([engine.prompt_ids(row["prompt"])], device=engine.device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=min(engine.end_ids))
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        ours.append(n / seq.wall_time)
        theirs.append(n / best)
    ratio = geomean([a / b for a, b in zip(ours, theirs)])
    return {"sequential_tokens_per_s": round(geomean(ours), 2), "generate_tokens_per_s": round(geomean(theirs), 2),
            "ratio": round(ratio, 4)}


def markdown(report: dict, title: str) -> str:
    m, s, g = report["machine"], report["summary"], report["generate"]
    lines = [f"# {title}", "", f"Machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}, "
             f"{m['threads']} threads). {report.get('model', '')} {report.get('dtype', '')}.", "",
             "| subset | n | wall-clock speedup | theoretical speedup | efficiency |",
             "| --- | --- | --- | --- | --- |"]
    for name, b in s.items():
        lines.append(f"| {name} | {b['n']} | {b['geomean_wall_speedup']} | {b['geomean_theoretical_speedup']} | "
                     f"{b['geomean_efficiency']} |")
    lines += ["", f"Sequential mode: {g['sequential_tokens_per_s']} tokens/s; model.generate: "
              f"{g['generate_tokens_per_s']} tokens/s (ratio {g['ratio']}).", "",
              "Time per engine step (ms; forward = masks and the model's pass):", "",
              "| mode | " + " | ".join(PHASES) + " | forward share |", "| --- " * (len(PHASES) + 2) + "|"]
    for mode, t in report.get("per_step_ms", {}).items():
        lines.append(f"| {mode} | " + " | ".join(str(t[k]) for k in PHASES) + f" | {t['forward_share']} |")
    lines += ["",
              "| id | blocks | sequential tokens | parallel steps | theoretical | wall seq (s) | wall pasta (s) | "
              "wall speedup | efficiency |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["sequences"]:
        lines.append(f"| {r['id']} | {r['blocks']} | {r['sequential_tokens']} | {r['parallel_steps']} | "
                     f"{r['theoretical_speedup']} | {r['wall_sequential_s']} | {r['wall_pasta_s']} | "
                     f"{r['wall_speedup']} | {r['efficiency']} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: str, title: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path.with_suffix(".json"))
    path.with_suffix(".md").write_text(markdown(report, title))

"""Load benchmark: an OpenAI-compatible server under 1, 4 and 16 concurrent clients.

Each client sends chat requests one after another (closed loop), greedy, `--max-tokens` each, over
a fixed set of instructions; a level ends when its requests are answered. Reported per level:
completion tokens/s over the level's wall time, and p50/p95 latency of a request. Servers are
started one after another from checkouts (`--server NAME=PATH`: `python -m interpreter serve` with
PATH first on PYTHONPATH), so today's tree and an older one are measured in one run on one machine:

    python benchmarks/load.py --server batched=. --server one-at-a-time=/tmp/old \\
        --out benchmarks/load-smollm2-cpu-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interpreter.bench import machine  # noqa: E402

INSTRUCTIONS = [
    "Give me five tips for sleeping better.",
    "Explain how a bicycle gear system works.",
    "Write a short story about a lighthouse keeper.",
    "What are the pros and cons of remote work?",
    "List the planets of the solar system with one fact each.",
    "How do I make a simple tomato sauce?",
    "Describe three ways to save money on groceries.",
    "Why is the sky blue? Explain for a child.",
    "Compare tea and coffee.",
    "Give me a plan for learning to play the guitar.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a neural network is.",
    "Suggest names for a bakery and say why.",
    "How can a small team run better meetings?",
    "Write a polite email asking to reschedule a meeting.",
    "What are good habits for writing clean code?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: str, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(root)}
    cmd = [sys.executable, "-m", "interpreter", "serve", "--model", "smollm2-135m-instruct", "--dtype", "bfloat16",
           "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=os.path.abspath(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"load.py: the server in {root} exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"load.py: the server in {root} did not answer /health in 300 s")


def one(url: str, k: int, max_tokens: int) -> tuple[float, int]:
    body = {"model": "smollm2-135m-instruct", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": INSTRUCTIONS[k % len(INSTRUCTIONS)]}]}
    start = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=3600)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]


def level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    per_client = -(-requests // clients)

    def client(c: int) -> list[tuple[float, int]]:
        return [one(url, c * per_client + i, max_tokens) for i in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [x for chunk in pool.map(client, range(clients)) for x in chunk]
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in done)
    tokens = sum(n for _, n in done)
    return {"clients": clients, "requests": len(done), "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 3)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def soak(url: str, pid: int, requests: int, clients: int = 8, max_tokens: int = 16, every: int = 50) -> list[dict]:
    """`requests` short requests from `clients` clients; the server's resident memory every `every` requests."""
    samples = [{"requests": 0, "rss_mb": round(rss_mb(pid), 1)}]
    for done in range(every, requests + 1, every):
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda k: one(url, k, max_tokens), range(done - every, done)))
        samples.append({"requests": done, "rss_mb": round(rss_mb(pid), 1)})
        print("soak", json.dumps(samples[-1]), flush=True)
    return samples


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Load benchmark: the server under concurrent clients", "",
             f"Machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} cores, torch {m['torch']}). SmolLM2-135M-Instruct "
             f"(embedded), bf16, greedy, max_tokens {report['max_tokens']}, chat requests in a closed loop per client. "
             f"{report['when']}.", "",
             "| server | clients | requests | completion tokens/s | × one-at-a-time at 1 client | p50 latency (s) | "
             "p95 latency (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    base = next((lv["tokens_per_s"] for name, levels in report["servers"].items() for lv in levels
                 if lv["clients"] == 1 and name == report.get("baseline")), None)
    for name, levels in report["servers"].items():
        for lv in levels:
            ratio = f"{lv['tokens_per_s'] / base:.2f}" if base else "–"
            lines.append(f"| {name} | {lv['clients']} | {lv['requests']} | {lv['tokens_per_s']} | {ratio} | "
                         f"{lv['p50_s']} | {lv['p95_s']} |")
    for name, samples in report.get("soak", {}).items():
        lines += ["", f"Soak, {name}: resident memory (MB) after " +
                  ", ".join(f"{s['requests']} requests: {s['rss_mb']}" for s in samples) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", action="append", required=True, help="NAME=PATH of a checkout to serve from")
    p.add_argument("--serve-args", default="", help="extra flags for every server, e.g. '--max-batch 16'")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least 2 per client)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--baseline", help="the server the ratio column divides by (default: the last one)")
    p.add_argument("--soak", type=int, default=0, help="then this many short requests (8 clients, 16 tokens), "
                   "sampling the server's memory")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    servers = dict(s.split("=", 1) for s in args.server)
    report = {"machine": machine(), "max_tokens": args.max_tokens, "when": time.strftime("%Y-%m-%d"),
              "baseline": args.baseline or list(servers)[-1], "servers": {}}
    for name, root in servers.items():
        port = _free_port()
        proc = start_server(root, port, args.serve_args.split())
        try:
            url = f"http://127.0.0.1:{port}"
            one(url, 0, 8)  # warm-up
            report["servers"][name] = []
            for clients in args.clients:
                lv = level(url, clients, max(args.requests, 2 * clients), args.max_tokens)
                print(name, json.dumps(lv), flush=True)
                report["servers"][name].append(lv)
            if args.soak:
                report.setdefault("soak", {})[name] = soak(url, proc.pid, args.soak)
        finally:
            proc.terminate()
            proc.wait(30)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1))
        Path(args.out).with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

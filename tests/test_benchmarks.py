"""The benchmark scripts run: the GPU engine benchmark on a tiny shape on CPU, the load benchmark's client
against a server over a tiny model."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_engine_benchmark_smoke_runs_on_cpu(capsys):
    gpu = _script("gpu_engine")
    assert gpu.main(["--shape", "tiny", "--device", "cpu", "--limit", "2", "--batches", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [set(r) >= {"wall_speedup", "efficiency"} for r in rows[:2]] == [True, True]
    assert rows[2]["requests"] == 2 and rows[2]["tokens_per_s_together"] > 0
    assert any(line.startswith("| 2 |") for line in lines)


def test_load_benchmark_measures_a_level():
    from serving import serving
    from tiny import bpe_tokenizer, tiny_model

    from interpreter import Engine
    from interpreter.server import create_app

    load = _script("load")
    tok = bpe_tokenizer()
    app = create_app(Engine(tiny_model("llama", len(tok)), tok), "smollm2-135m-instruct")
    with serving(app) as (url, _):
        level = load.level(url, clients=2, requests=4, max_tokens=6)
    assert level["requests"] == 4 and 0 < level["completion_tokens"] <= 24
    assert level["p50_s"] <= level["p95_s"] and level["tokens_per_s"] > 0
    report = {"machine": {"cpu": "x", "cpu_count": 2, "torch": "t"}, "max_tokens": 6, "when": "today",
              "baseline": "a", "servers": {"a": [{**level, "clients": 1}], "b": [level]}}
    assert "| b | 2 | 4 |" in load.markdown(report)

"""Several eval workers split one job; the merge joins their answers exactly once."""

import json
import subprocess
import sys

import pytest
from tiny import bpe_tokenizer, tiny_model

from eval.run import EvalArguments, main
from pipeline.shards import ShardError


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok = bpe_tokenizer()
    for i, name in enumerate(["baseline-sft", "pasta-sft"]):
        tiny_model("llama", len(tok), seed=i).save_pretrained(root / "s" / "models" / name)
        tok.save_pretrained(root / "s" / "models" / name)
    (root / "p.jsonl").write_text("\n".join(json.dumps({"instruction": f"Question {i}?"}) for i in range(7)))
    return root


def _flags(root):
    return ["--run_dir", str(root / "s"), "--prompts", str(root / "p.jsonl"), "--max_new_tokens",
            "8", "--methods", "sequential", "pasta", "--bootstrap", "20",
            "--proxy_reference", str(root / "s" / "models" / "baseline-sft")]


def test_three_workers_then_merge(run_root):
    workers = [subprocess.Popen([sys.executable, "-m", "eval", *_flags(run_root), "--shard", f"{i}/3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    gens = run_root / "s" / "eval" / "generations"
    shard_rows = [json.loads(line) for f in gens.glob("*.shard-*-of-3.jsonl") for line in f.read_text().splitlines()]
    assert len(shard_rows) == 2 * 7  # two rows of the table, seven prompts, each answered once

    args = EvalArguments(run_dir=str(run_root / "s"), prompts=str(run_root / "p.jsonl"),
                         max_new_tokens=8, methods=["sequential", "pasta"], bootstrap=20, merge_shards=3,
                         proxy_reference=str(run_root / "s" / "models" / "baseline-sft"))
    rows = main(args)
    assert [r["n"] for r in rows] == [7, 7]
    merged = gens / "pasta--pasta-sft.jsonl"
    assert sorted(json.loads(line)["prompt_id"] for line in merged.read_text().splitlines()) == sorted(
        {r["prompt_id"] for r in shard_rows})
    assert len(merged.read_text().splitlines()) == 7  # merged once, nothing generated again


def test_merge_refuses_a_missing_shard(run_root, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"instruction": "Only one?"}))
    gens = tmp_path / "s" / "eval" / "generations"
    gens.mkdir(parents=True)
    (gens / "sequential--baseline-sft.shard-0-of-2.jsonl").write_text("")
    args = EvalArguments(run_dir=str(tmp_path / "s"), prompts=str(tmp_path / "p.jsonl"), merge_shards=2,
                         baseline_model=str(run_root / "s" / "models" / "baseline-sft"), methods=["sequential"])
    with pytest.raises(ShardError, match=r"shards \[1\] of 2"):
        main(args)

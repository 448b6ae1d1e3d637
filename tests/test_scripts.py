"""The cluster launchers: valid bash, and in --dry-run they print the commands they would run."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "scripts").glob("*.sbatch"))


def sh(*args, env=None, cwd=ROOT):
    return subprocess.run(["bash", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PATH": "/usr/bin:/bin", **(env or {})})


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert sh("-n", str(script)).returncode == 0


def test_single_node_training_resumes_when_a_checkpoint_exists(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {tmp_path}/run\nvariant: pasta\n")
    out = sh("scripts/train_node.sh", str(recipe), "zero3", "--dry-run", env={"GPUS": "8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"+ accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 "
                                  f"-m finetune --config {recipe}")
    (tmp_path / "run" / "checkpoints" / "pasta-sft" / "checkpoint-10").mkdir(parents=True)
    out = sh("scripts/train_node.sh", str(recipe), "zero3", "--dry-run", env={"GPUS": "8"})
    assert out.stdout.strip().endswith("--resume_from_checkpoint true")


def test_slurm_template_launches_zero3_on_every_node():
    out = sh("scripts/train_slurm.sbatch", "configs/paper/gemma-7b-sft.yaml", env={"DRY_RUN": "1", "SLURM_NNODES": "4"})
    assert out.returncode == 0, out.stderr
    assert "srun" in out.stdout and "configs/accelerate/multi_node.yaml" in out.stdout
    assert "--num_machines\\ 4" in out.stdout and "--num_processes\\ 32" in out.stdout


def test_sharded_eval_starts_n_workers_then_merges():
    out = sh("scripts/shard_eval.sh", "configs/demo/eval.yaml", "3", "--dry-run")
    lines = out.stdout.strip().splitlines()
    assert lines[:3] == [f"+ python -m eval --config configs/demo/eval.yaml --shard {i}/3" for i in range(3)]
    assert lines[3] == "+ python -m eval --config configs/demo/eval.yaml --merge_shards 3"


def test_vllm_server_stays_on_loopback_without_a_key():
    out = sh("scripts/serve_vllm.sh", "some/model", "--dry-run")
    assert "--host 127.0.0.1" in out.stdout and "--enable-prefix-caching" in out.stdout
    wide = sh("scripts/serve_vllm.sh", "some/model", "--dry-run", env={"HOST": "0.0.0.0"})
    assert wide.returncode == 2 and "VLLM_API_KEY" in wide.stderr

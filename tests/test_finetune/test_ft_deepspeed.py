"""A real 2-step DeepSpeed ZeRO-2 job through `accelerate launch` and the repo's launch configs, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ft_helpers import save_dataset, save_tiny_model

from interpreter import load_model

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # DeepSpeed builds its CPU communication op on first use (about 2 minutes, then cached)
def test_zero2_job_on_cpu(tmp_path):
    (tmp_path / "data").mkdir()
    data, model = save_dataset(tmp_path / "data"), save_tiny_model(tmp_path / "model", "llama", tied=True)
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--config_file", "configs/accelerate/zero2.yaml", "--num_processes", "1",
           "-m", "finetune", "--run_dir", str(tmp_path / "run"), "--dataset", data, "--model_name_or_path", model,
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false", "--activation_checkpointing",
           "false", "--report_to", "none", "--save_steps", "2", "--disable_tqdm", "true"]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = list((tmp_path / "run/checkpoints/pasta-sft/checkpoint-2").glob("global_step2/*optim_states.pt"))
    assert [p.name for p in shards] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt"]  # ZeRO's partitioned optimizer
    out = tmp_path / "run/models/pasta-sft"
    assert json.loads((out / "training.json").read_text())["steps"] == 2
    load_model(str(out))

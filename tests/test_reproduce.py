"""docs/reproduce.md: every command of the paper's study parses, by dry run, on this CPU: each `python -m` stage
with --dry_run (an `accelerate launch` too), each script with DRY_RUN=1, and every stage command a script prints."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ("python -m venv", "export ")  # environment set-up: nothing to dry-run


def commands() -> list[str]:
    """The command lines of the Commands block, continuation lines joined and `for ...; do CMD & done` loops
    unrolled to their first worker."""
    text = (ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8")
    block = re.search(r"## Commands\n.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    out = []
    for line in lines:
        loop = re.fullmatch(r"for i in \$\(seq 0 \d+\); do (.*) & done; wait", line.strip())
        out.append(" ".join(loop.group(1).replace("$i", "0").split()) if loop else " ".join(line.split()))
    return out


def stage(argv: list[str]) -> list[str] | None:
    """The `python -m MODULE ...` (or `accelerate launch ... -m MODULE ...`) in `argv` as [MODULE, *flags]."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # CUDA_VISIBLE_DEVICES=0 ...
        argv = argv[1:]
    if len(argv) > 2 and argv[1] == "-m" and Path(argv[0]).name.startswith("python"):  # python, .venv/bin/python
        return argv[2:]
    if argv[:2] == ["accelerate", "launch"]:
        config = argv[argv.index("--config_file") + 1]
        assert (ROOT / config).is_file(), config
        return argv[argv.index("-m") + 1:]
    return None


ENTRY = {"data_gen": ("data_gen.cli", "main"), "finetune": ("finetune.__main__", "main"),
         "finetune.prefopt": ("finetune.prefopt", "main"), "eval": ("eval.run", "cli")}


def dry_run(module_and_flags: list[str], capsys) -> None:
    """`python -m MODULE FLAGS --dry_run`, in this process."""
    import importlib

    module, *flags = module_and_flags
    name, function = ENTRY[module]
    capsys.readouterr()
    code = getattr(importlib.import_module(name), function)([*flags, "--dry_run"])
    out, err = capsys.readouterr()
    assert code == 0 and f"python -m {module}: dry run" in out, (module_and_flags, err[-1500:])


def script(argv: list[str]) -> list[list[str]]:
    """Runs a script line with DRY_RUN=1; returns the stage commands it prints."""
    env = {**os.environ, "DRY_RUN": "1"}
    while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        name, value = argv.pop(0).split("=", 1)
        env[name] = value
    if argv[0] == "sbatch":
        argv = ["bash", *argv[1:]]
    done = subprocess.run(["bash", *argv] if argv[0] != "bash" else argv, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, (argv, done.stderr[-1500:])
    printed = [shlex.split(line[2:]) for line in (done.stdout + done.stderr).splitlines() if line.startswith("+ ")]
    inner = []
    for argv in printed:  # srun ... bash -c "accelerate launch ...": the command srun runs
        inner.append(shlex.split(argv[-1]) if argv[0] == "srun" else argv)
    found = [s for argv in inner if (s := stage(argv))]
    # the workers of one stage differ only in --shard i/n: the first stands for them all
    return [s for k, s in enumerate(found) if k == 0 or re.sub(r"--shard \d+/", "", " ".join(s)) not in
            {re.sub(r"--shard \d+/", "", " ".join(t)) for t in found[:k]}]


COMMANDS = commands()


def test_the_block_holds_every_stage_in_order():
    modules = [s[0] for line in COMMANDS if not line.startswith(SETUP) and (s := stage(shlex.split(line)))]
    assert modules == ["data_gen", "data_gen", "finetune.prefopt", "finetune.prefopt", "finetune.prefopt",
                       "finetune.prefopt"]
    scripts = [w for line in COMMANDS for w in shlex.split(line) if w.startswith("scripts/")]
    assert scripts == ["scripts/smoke_gpu.sh", "scripts/serve_vllm.sh", "scripts/train_node.sh",
                       "scripts/train_node.sh", "scripts/train_slurm.sbatch", "scripts/shard_eval.sh"]


@pytest.mark.parametrize("line", COMMANDS)
def test_every_command_dry_runs(line, capsys, monkeypatch):
    if line.startswith(SETUP):
        for requirements in re.findall(r"-r (\S+)", line):
            assert (ROOT / requirements).is_file(), requirements
        return
    argv = shlex.split(line)
    found = stage(argv)
    stages = [found] if found else script(argv)
    assert found or any(w.startswith("scripts/") for w in argv), f"not a stage or a script: {line}"
    monkeypatch.chdir(ROOT)
    for command in stages:
        dry_run(command, capsys)

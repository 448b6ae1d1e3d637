"""`python -m data_gen --config configs/demo/dataset.yaml [--flag value ...]`: flags override the YAML."""

from __future__ import annotations

import json
import shlex
import sys

from .config import DataGenConfig

DESCRIPTION = ("Teacher annotation: instruction data in, a Pasta-Lang training set out (<run_dir>/dataset). "
               "--config FILE.yaml sets any of the flags below.")


def parse_config(argv: list[str] | None = None) -> DataGenConfig:
    from trl import TrlParser

    from pipeline.errors import parse

    (cfg,) = parse(TrlParser(DataGenConfig, prog="python -m data_gen", description=DESCRIPTION), argv)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m data_gen", shlex.join(argv)]).strip()
    return cli(TrlParser(DataGenConfig, prog="python -m data_gen", description=DESCRIPTION),
               lambda cfg: run(cfg, command), argv, errors=(ModelNotFound,))


def run(cfg: DataGenConfig, command: str) -> None:
    from .build import build

    stats = build(cfg, command=command)
    if cfg.shard:
        print(f"data_gen: wrote {stats['path']}; once every shard is done, join them with the same flags and "
              f"--merge_shards {stats['shard'].split('/')[1]}", file=sys.stderr)
        print(json.dumps(stats))
        return
    summary = {k: stats[k] for k in ("kept", "train", "test", "with_blocks", "without_blocks", "seconds")}
    summary["rejected"] = {k: v for k, v in stats["rejected"].items() if v}
    summary["mean_theoretical_speedup"] = stats["theoretical_speedup"]["mean"]
    print(f"data_gen: wrote {cfg.dataset_dir}", file=sys.stderr)
    print(json.dumps(summary))

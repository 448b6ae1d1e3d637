"""`python -m data_gen --config configs/demo/dataset.yaml [--flag value ...]`: flags override the YAML."""

from __future__ import annotations

import json
import shlex
import sys

from .config import DataGenConfig


def parse_config(argv: list[str] | None = None) -> DataGenConfig:
    from trl import TrlParser

    parser = TrlParser(DataGenConfig, prog="python -m data_gen",
                       description="Teacher annotation: instruction data in, a Pasta-Lang training set out "
                       "(<run_dir>/dataset). --config FILE.yaml sets any of the flags below.")
    (cfg,) = parser.parse_args_and_config(argv)
    return cfg


def main(argv: list[str] | None = None) -> int:
    import yaml

    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(argv)
    except OSError as err:  # a config file that cannot be read; the message names it
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, yaml.YAMLError) as err:  # a broken config file, or a key it may not have
        where = f"{argv[argv.index('--config') + 1]}: " if "--config" in argv[:-1] else ""
        print(f"error: {where}{err}", file=sys.stderr)
        return 2
    from interpreter import ModelNotFound

    from .build import DataGenError, build
    from .openai_teacher import TeacherError
    from .runfolder import RunFolderBusy, WriteError
    from .shards import ShardError
    from .sources import SourceError

    try:
        stats = build(cfg, command=" ".join(["python -m data_gen", shlex.join(argv)]).strip())
    except (DataGenError, RunFolderBusy, WriteError, ShardError, TeacherError, SourceError, ModelNotFound,
            ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data_gen: interrupted; run the same command again to go on from the cache", file=sys.stderr)
        return 130
    if cfg.shard:
        print(f"data_gen: wrote {stats['path']}; once every shard is done, join them with the same flags and "
              f"--merge_shards {stats['shard'].split('/')[1]}", file=sys.stderr)
        print(json.dumps(stats))
        return 0
    summary = {k: stats[k] for k in ("kept", "train", "test", "with_blocks", "without_blocks", "seconds")}
    summary["rejected"] = {k: v for k, v in stats["rejected"].items() if v}
    summary["mean_theoretical_speedup"] = stats["theoretical_speedup"]["mean"]
    print(f"data_gen: wrote {cfg.dataset_dir}", file=sys.stderr)
    print(json.dumps(summary))
    return 0

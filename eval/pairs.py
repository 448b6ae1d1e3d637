"""Best-of-N preference pairs for BoNBoN, sampled alone (`python -m finetune.prefopt` samples them itself).

python -m eval.pairs --policy runs/demo/models/pasta-sft --out runs/demo/prefopt/round-1 --lambdas 1 inf
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from interpreter.models import DTYPE_HELP
from pipeline.preference import PreferenceArguments, sample_pairs


@dataclass
class PairsArguments(PreferenceArguments):
    policy: str | None = field(default=None, metadata={"help": "model to sample; default <run_dir>/models/pasta-sft"})
    out: str | None = field(default=None, metadata={"help": "folder for samples and pairs; default <run_dir>/prefopt"})
    dtype: str | None = field(default=None, metadata={"help": f"the policy's: {DTYPE_HELP}"})


def main(args: PairsArguments) -> dict:
    policy = args.policy or str(Path(args.run_dir) / "models" / "pasta-sft")
    summary = sample_pairs(args, policy, Path(args.out or Path(args.run_dir) / "prefopt"), dtype=args.dtype)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    from trl import TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    sys.exit(cli(TrlParser((PairsArguments,), prog="python -m eval.pairs", description=__doc__), main,
                 errors=(ModelNotFound,)))

"""python -m finetune: SFT with PASTA attention masks (LoRA or full; the PASTA model and its Baseline-SFT control).

  python -m finetune --config configs/demo/smollm2-sft.yaml --variant both
  accelerate launch --config_file configs/accelerate/zero2.yaml -m finetune --config configs/paper/gemma-7b-sft.yaml

Every recipe key is also a flag, and flags override the recipe (TRL's TrlParser).
"""

import os
import sys


def run(args, sft, model_args) -> None:
    from .sft import check_args, train

    check_args(args, sft, model_args)
    if "wandb" in sft.report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # logs locally unless an account is set up
    for variant in ["pasta", "baseline"] if args.variant == "both" else [args.variant]:
        train(variant, args, sft, model_args)


def main(argv=None) -> int:
    from trl import ModelConfig, SFTConfig, TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    from .sft import FinetuneArguments

    parser = TrlParser((FinetuneArguments, SFTConfig, ModelConfig), prog="python -m finetune", description=__doc__)
    return cli(parser, run, argv, errors=(ModelNotFound,))


if __name__ == "__main__":
    sys.exit(main())

"""python -m finetune: SFT with PASTA attention masks (LoRA or full; the PASTA model and its Baseline-SFT control).

  python -m finetune --config configs/demo/smollm2-sft.yaml --variant both
  accelerate launch --config_file configs/accelerate/zero2.yaml -m finetune --config configs/paper/gemma-7b-sft.yaml

Every recipe key is also a flag, and flags override the recipe (TRL's TrlParser).
"""

import os


def main(argv=None) -> None:
    from trl import ModelConfig, SFTConfig, TrlParser

    from interpreter import ModelNotFound

    from .data import DatasetError
    from .errors import fail, parse
    from .sft import FinetuneArguments, check_args, train

    parser = TrlParser((FinetuneArguments, SFTConfig, ModelConfig), prog="python -m finetune", description=__doc__)
    args, sft, model_args = parse(parser, argv)
    try:
        check_args(args, sft, model_args)
    except (ValueError, OSError) as err:
        fail(parser.prog, err)
    if "wandb" in sft.report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # logs locally unless an account is set up
    variants = ["pasta", "baseline"] if args.variant == "both" else [args.variant]
    try:
        for variant in variants:
            train(variant, args, sft, model_args)
    except (DatasetError, ModelNotFound, ValueError) as err:
        fail(parser.prog, err)


if __name__ == "__main__":
    main()

"""python -m finetune: SFT with PASTA attention masks (LoRA or full; the PASTA model and its Baseline-SFT control).

  python -m finetune --config configs/demo/smollm2-sft.yaml --variant both
  accelerate launch --config_file configs/accelerate/zero2.yaml -m finetune --config configs/paper/gemma-7b-sft.yaml
  python -m finetune --config configs/demo/smollm2-sft.yaml --push_to_hub --hub_model_id you/smollm2-pasta

Every recipe key is also a flag, and flags override the recipe (TRL's TrlParser). --push_to_hub uploads each final
model folder (<run_dir>/models/<variant>-sft, trained or already there) with a model card: --variant both pushes the
PASTA model to --hub_model_id and its control to <hub_model_id>-baseline.
"""

import sys


def run(args, sft, model_args) -> None:
    from pipeline.tracking import offline_unless_logged_in

    from .sft import check_args, cpu_precision, push, train

    sft = cpu_precision(sft)
    check_args(args, sft, model_args)
    offline_unless_logged_in(sft.report_to)
    for variant in ["pasta", "baseline"] if args.variant == "both" else [args.variant]:
        summary = train(variant, args, sft, model_args)
        if sft.push_to_hub:
            push(variant, summary, args, sft, model_args)


def main(argv=None) -> int:
    from trl import ModelConfig, SFTConfig, TrlParser

    from interpreter import ModelNotFound
    from pipeline.errors import cli

    from .sft import FinetuneArguments

    parser = TrlParser((FinetuneArguments, SFTConfig, ModelConfig), prog="python -m finetune", description=__doc__)
    return cli(parser, run, argv, errors=(ModelNotFound,))


if __name__ == "__main__":
    sys.exit(main())

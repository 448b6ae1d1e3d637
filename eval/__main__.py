"""python -m eval --config configs/demo/eval.yaml [--flag value ...]: quality and speed of every method."""

from trl import TrlParser

from .run import EvalArguments, main

if __name__ == "__main__":
    (args,) = TrlParser((EvalArguments,), prog="python -m eval", description=__doc__).parse_args_and_config()
    main(args)

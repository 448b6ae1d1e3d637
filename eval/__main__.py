"""python -m eval --config configs/demo/eval.yaml [--flag value ...]: quality and speed of every method."""

import sys

from .run import cli

if __name__ == "__main__":
    sys.exit(cli())

"""python -m eval: Quality and wall-clock speedup of PASTA against sequential and parallel baselines."""

import argparse
import sys

parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
parser.parse_args()
sys.exit("python -m eval: this stage is not built yet (see the project's issues)")

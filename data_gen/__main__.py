"""python -m data_gen: Teacher annotation: instruction data in, a Pasta-Lang training set out."""

import argparse
import sys

parser = argparse.ArgumentParser(prog="python -m data_gen", description=__doc__)
parser.parse_args()
sys.exit("python -m data_gen: this stage is not built yet (see the project's issues)")

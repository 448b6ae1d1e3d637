"""python -m finetune: SFT and preference optimization with PASTA attention masks."""

import argparse
import sys

parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
parser.parse_args()
sys.exit("python -m finetune: this stage is not built yet (see the project's issues)")

"""Teacher annotation: instruction data in, a Pasta-Lang training set out.

    from data_gen import annotate, load_run_dataset
    annotate(answer, tokenizer)   # the structural teacher's stored form of one answer
    load_run_dataset("runs/demo")  # the DatasetDict that `make dataset` wrote to runs/demo/dataset
"""

from .build import build
from .config import DataGenConfig
from .structural import annotate
from .writer import load_run_dataset

__all__ = ["annotate", "build", "DataGenConfig", "load_run_dataset"]

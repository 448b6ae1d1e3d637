"""Teacher annotation: instruction data in, a Pasta-Lang training set out.

    from data_gen import annotate
    annotate(answer, tokenizer)   # the structural teacher's stored form of one answer

The dataset a run wrote is read with `pipeline.dataset.load_splits("runs/demo")`.
"""

from .build import build
from .config import DataGenConfig
from .structural import annotate

__all__ = ["annotate", "build", "DataGenConfig"]

"""python -m data_gen: teacher annotation, instruction data in, a Pasta-Lang training set out."""

import sys

from .cli import main

sys.exit(main())

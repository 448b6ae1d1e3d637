"""One way to fail: an error a user can hit is one line naming the command, and exit status 2."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(prog: str, err: object) -> NoReturn:
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(2)


def parse(parser, argv):
    """TrlParser.parse_args_and_config, with a missing or broken recipe as one line (not a usage screen)."""
    import yaml

    try:
        return parser.parse_args_and_config(argv)
    except (OSError, ValueError, yaml.YAMLError) as err:
        fail(parser.prog, err)

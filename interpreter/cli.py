"""`python -m interpreter …`: validate and strip stored sequences."""

from __future__ import annotations

import argparse
import json
import sys

from .models import ModelNotFound
from .parser import PastaSyntaxError, parse


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _validate(args) -> int:
    doc = parse(_read(args.file))
    stats = doc.stats()
    if args.tokenizer:
        from .cost import measure
        from .models import load_tokenizer

        stats.update(measure(doc, load_tokenizer(args.tokenizer)).as_dict())
    print(json.dumps(stats))
    return 0


def _strip(args) -> int:
    sys.stdout.write(parse(_read(args.file)).stripped)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interpreter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a stored sequence; print its stats as one JSON line")
    p.add_argument("file", help="a file holding one stored sequence, or - for stdin")
    p.add_argument("--tokenizer", help="also report the cost measures under this model's tokenizer "
                   "(e.g. smollm2-135m-instruct)")
    p.set_defaults(run=_validate)
    p = sub.add_parser("strip", help="print the stitched form (every tag removed)")
    p.add_argument("file", help="a file holding one stored sequence, or - for stdin")
    p.set_defaults(run=_strip)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PastaSyntaxError as err:
        print(f"{args.file}:{err}", file=sys.stderr)
        return 1
    except ModelNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as err:
        print(f"error: cannot read {args.file}: {err}", file=sys.stderr)
        return 2

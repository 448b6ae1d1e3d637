"""One way to fail: an error a user can hit is one line naming the command, and exit status 2.

Every stage's entry point runs through `cli`: it parses the flags over the YAML recipe (TRL's
`TrlParser`), runs the stage, and turns the typed errors below (and ValueError, OSError) into that
line. A killed run (Ctrl-C) says that running the same command again goes on from the caches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import NoReturn


class PipelineError(Exception):
    """An error a user can cause (a bad input, a busy run folder, a full disk); its message is the one line."""


def one_line(err: BaseException | str) -> str:
    """The message of `err` on one line, naming the file of an OSError."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split())  # a YAML error spans lines


def fail(prog: str, err: BaseException | str) -> NoReturn:
    """Prints the one line and exits with status 2."""
    raise SystemExit(_report(prog, err))


def _report(prog: str, err: BaseException | str) -> int:
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return 2


def parse(parser, argv: Sequence[str] | None = None):
    """TrlParser.parse_args_and_config, with a missing or broken recipe as one line (not a usage screen), and a
    recipe's one value for a list setting (`limit: 16`) taken as the list `--limit 16` gives."""
    import yaml

    _recipe_scalars_as_lists(parser)
    try:
        return parser.parse_args_and_config(argv)
    except (OSError, ValueError, yaml.YAMLError) as err:
        argv = sys.argv[1:] if argv is None else list(argv)
        named = "--config" in argv[:-1] and not isinstance(err, OSError)  # an OSError names its file itself
        fail(parser.prog, (f"{argv[argv.index('--config') + 1]}: " if named else "") + one_line(err))


def _recipe_scalars_as_lists(parser) -> None:
    """argparse takes a recipe's values as defaults, as written: a list setting given one value would reach its
    dataclass as that value. Wrapping it before the dataclasses are built leaves their own normalization (TRL's
    `lora_target_modules`) to run on what a flag would have given."""
    take = parser.set_defaults_with_config
    lists = {a.dest for a in parser._actions if a.nargs in ("+", "*")}

    def set_defaults_with_config(**config):
        return take(**{k: [v] if k in lists and not isinstance(v, list) and v is not None else v
                       for k, v in config.items()})

    parser.set_defaults_with_config = set_defaults_with_config


DRY_RUN = ("--dry_run", "--dry-run")


def cli(parser, main: Callable, argv: Sequence[str] | None = None, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Parses `argv` with `parser` (a TrlParser) and calls `main(*parsed)`; returns the exit status: 2 after one line
    for an error a user can cause (PipelineError, ValueError, OSError and `errors`), 130 for an interrupt.
    With --dry_run, parses the recipe and flags, prints the settings that differ from the defaults, and stops."""
    argv = list(sys.argv[1:] if argv is None else argv)
    dry = any(a in DRY_RUN for a in argv)
    parser.epilog = "--dry_run: parse the recipe and flags, print the settings, run nothing."
    try:
        with _as_on_a_gpu() if dry else nullcontext():
            parsed = parse(parser, [a for a in argv if a not in DRY_RUN])
    except SystemExit as err:
        return err.code
    if dry:
        print(f"{parser.prog}: dry run; it would run with:")
        for args in parsed:
            for name, value in _changed(args).items():
                print(f"  {name}: {value!r}")
        return 0
    try:
        main(*parsed)
    except (PipelineError, ValueError, OSError, *errors) as err:
        return _report(parser.prog, err)
    except SystemExit as err:  # a check deep in a stage that stops with its message
        if isinstance(err.code, str):
            return _report(parser.prog, err.code)
        raise
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; run the same command again to go on from the caches", file=sys.stderr)
        return 130
    return 0


def _changed(args) -> dict:
    """The fields of a parsed dataclass that differ from their declared defaults (enums as their values)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(args):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(args, f.name)
        value = getattr(value, "value", value)
        if f.repr and value != getattr(default, "value", default):
            out[f.name] = value
    return out


@contextmanager
def _as_on_a_gpu():
    """A dry run checks a GPU recipe on any machine: TrainingArguments refuses bf16 where no GPU supports it."""
    from unittest import mock

    with mock.patch("transformers.training_args.is_torch_bf16_gpu_available", return_value=True):
        yield

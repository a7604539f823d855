"""The `zoo` command line: a thin dispatcher over subcommand modules.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its subcommands and
sets `run=<function(args) -> int | None>` as their default. Bad input is reported as one line on
stderr with exit status 2 (argparse's convention); `ZOO_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "zoo.commands.models",
    "train.commands",
    "zoo.commands.hub",
    "zoo.commands.convert",
    "zoo.commands.plot",
)

# The exceptions that mean "the input was wrong", not "the program is broken".
USER_ERRORS = (
    ImportError,  # an optional extra that is not installed; the message names the pip command
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    FileExistsError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo", description="jax-zoo: create, inspect, train and load zoo models by name."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        if os.environ.get("ZOO_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `zoo` command line: a thin dispatcher over one module per group of subcommands.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its subcommands and sets
`run=<function(args) -> int | None>` as their default. A `ZooError` (bad input: an unknown name,
a wrong value, a missing or corrupt file) is reported as one line on stderr with exit status 2,
argparse's convention, and so is a malformed command line; `ZOO_DEBUG=1` shows the traceback
instead. Any other exception is a bug and keeps its traceback. Before any command runs,
`zoo.configure_cpu()` applies the CPU settings the zoo's timings were measured with
(`zoo.runtime`).

Ctrl-C and SIGTERM stop any command with one line and exit status 130 or 143
(`zoo.interrupts`): `main` installs their handlers first, then imports the subcommands (and
with them JAX), so an interrupt while importing is handled like any other.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from zoo import interrupts, runtime
from zoo.errors import ZooError

COMMANDS = ("models", "training", "hub", "convert", "plot", "export")


class Parser(argparse.ArgumentParser):
    """argparse with the zoo's conventions: an error is one line (no usage block), and a value
    that starts with '-' and a digit is a value, not an option (`--input-shape -1,28,1` reaches
    the option, which names what is wrong with it; argparse alone takes only plain negative
    numbers so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No zoo option starts with a digit. (argparse keeps the pattern on each parser.)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="zoo", description="jax-zoo: create, inspect, train and load zoo models by name."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"zoo.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `zoo ARGV...` (default: `sys.argv[1:]`); returns the exit status."""
    with interrupts.handled("zoo"):
        runtime.configure_cpu()  # before JAX starts a backend: XLA and malloc read them then
        try:
            args = build_parser().parse_args(argv)
            interrupts.report(lambda signal: f"zoo {args.command}: interrupted ({signal})")
            return int(args.run(args) or 0)
        except KeyboardInterrupt as stop:  # `Interrupted`, or Python's own off the main thread.
            signum = getattr(stop, "signum", signal.SIGINT)
            print(interrupts.line(signum), file=sys.stderr)
            return 128 + signum
        except ZooError as error:
            if os.environ.get("ZOO_DEBUG"):
                raise
            print(f"zoo {args.command}: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())

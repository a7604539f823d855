"""The `zoo` command line: a thin dispatcher over one module per group of subcommands.

Each module in `COMMANDS` exposes `register(subparsers)`, which adds its subcommands and sets
`run=<function(args) -> int | None>` as their default. A `ZooError` (bad input: an unknown name,
a wrong value, a missing or corrupt file) is reported as one line on stderr with exit status 2,
argparse's convention; `ZOO_DEBUG=1` shows its traceback instead. Any other exception is a bug
and keeps its traceback. Before any command runs, `zoo.configure_cpu()` applies the CPU
settings the zoo's timings were measured with (`zoo.runtime`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from zoo import runtime
from zoo.cli import convert, export, hub, models, plot, training
from zoo.errors import ZooError

COMMANDS = (models, training, hub, convert, plot, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo", description="jax-zoo: create, inspect, train and load zoo models by name."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `zoo ARGV...` (default: `sys.argv[1:]`); returns the exit status."""
    runtime.configure_cpu()  # before JAX starts a backend: XLA and malloc read them then
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ZooError as error:
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"zoo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

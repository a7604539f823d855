"""`zoo export`: a registry model as a portable `jax.export` artifact (see `zoo.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.errors import NotWritableError
from zoo.export import (
    PLATFORMS,
    check_platforms,
    custom_calls,
    describe,
    export_model,
    serialize,
)
from zoo.hub import check_outside_registries, load
from zoo.outputs import write_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a saved model as a portable jax.export (StableHLO) file",
        description="Write the inference function of a registry model, raw uint8 images "
        "(N, H, W, C) in and logits out, with any N, as a serialized jax.export artifact. "
        "Load it with jax alone: jax.export.deserialize(bytearray(open(FILE, 'rb').read()))"
        ".call(images).",
    )
    parser.add_argument("name", help="the checkpoint name (see 'zoo checkpoints')")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="file to write")
    parser.add_argument("--step", type=int, help="the step to export (default: the latest)")
    parser.add_argument(
        "--platforms",
        default=",".join(PLATFORMS),
        metavar="LIST",
        help="comma-separated platforms to lower for (default: %(default)s)",
    )
    parser.add_argument("--registry", metavar="DIR", type=Path, help="the registry folder")
    parser.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    # Before any work: never into a registry (an export once overwrote a step's manifest).
    out = check_outside_registries(args.out, "--out", registry=args.registry)
    if out.is_dir() or not out.parent.is_dir():
        raise NotWritableError(f"--out {args.out}: need a file path in an existing folder")
    platforms = [p.strip() for p in args.platforms.split(",")]
    check_platforms(platforms)
    loaded = load(args.name, step=args.step, registry=args.registry)
    exported = export_model(loaded, platforms=platforms)
    if custom_calls(exported):  # Never ship a file that runs only where a kernel is registered.
        raise RuntimeError(f"the export carries custom calls: {custom_calls(exported)}")
    data = serialize(exported)
    write_bytes(out, data)  # Whole or not at all: an older file survives a failed write.
    info = describe(exported)
    print(
        f"wrote {args.out}: {args.name} step {loaded.step}, {info['input']} images -> "
        f"{info['output']} logits, for {', '.join(info['platforms'])} ({len(data):,} bytes)"
    )
    return 0

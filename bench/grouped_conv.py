"""ResNeXt's grouped 3x3 convolutions on oneDNN and on XLA, each direction alone, side by side.

    python bench/grouped_conv.py [--batch 8] [--rounds 9] [--precisions fp32,bf16] [--layers 0,8]

Every distinct grouped 3x3 of resnext50_32x4d at 224x224 (32 groups of 4, 8, 16, 32 channels;
stride 1, and stride 2 where a stage opens), resnext101_64x4d's first stage (64 groups of 4)
and two groups of 256 channels: the forward pass, the input gradient and the weight gradient,
each jitted on its own, on oneDNN's kernel (`zoo.ops.conv`'s plan) and on XLA's
(`lax.conv_general_dilated` and its transposes). Blocks of ~0.1 s of calls alternate (oneDNN
first in even rounds; a kernel over 20x slower than the other in 2 rounds only); prints the
medians (ms) and XLA / oneDNN per direction as JSON: above 1, oneDNN is faster.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp

import zoo
from zoo.ops import conv, native

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists

# (map size, channels, groups, stride) of each grouped 3x3: its input is size x size x channels.
LAYERS = [
    (56, 128, 32, 1),
    (56, 256, 32, 2),
    (28, 256, 32, 1),
    (28, 512, 32, 2),
    (14, 512, 32, 1),
    (14, 1024, 32, 2),
    (7, 1024, 32, 1),
    (56, 256, 64, 1),
    (14, 512, 2, 1),  # two wide groups (256 channels each), where XLA's kernels are at their best
]
DIRECTIONS = {
    "forward": native.FORWARD,
    "input": native.BACKWARD_DATA,
    "weights": native.BACKWARD_WEIGHTS,
}
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats * 1e3


def layer_runs(batch: int, size: int, channels: int, groups: int, stride: int, dtype):
    """{direction: {"onednn": fn, "xla": fn}} for one layer, each compiled and warmed up."""
    lhs = (batch, size, size, channels)
    rhs = (3, 3, channels // groups, channels)
    geometry = conv.Geometry(
        lhs, rhs, jnp.dtype(dtype), (stride, stride), ((1, 1), (1, 1)), (1, 1), groups
    )
    plan = conv.planned(geometry)
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], lhs, dtype)
    w = jax.random.normal(keys[1], rhs, dtype)
    d_out = jax.random.normal(keys[2], geometry.out_shape, dtype)
    operands = {"forward": (x, w), "input": (d_out, w), "weights": (x, d_out)}
    runs = {}
    for name, direction in DIRECTIONS.items():
        if plan.kernels[direction] is None:
            continue
        ours = jax.jit(functools.partial(conv._direction, plan, direction))
        theirs = jax.jit(functools.partial(conv._xla_direction, geometry, None, direction))
        a, b = operands[name]
        runs[name] = {
            "onednn": functools.partial(ours, a, b),
            "xla": functools.partial(theirs, a, b),
        }
        for fn in runs[name].values():
            jax.block_until_ready(fn())
    return runs, 2 * geometry.macs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--layers", help="comma-separated indices into LAYERS (default: all)")
    args = parser.parse_args()
    chosen = [LAYERS[int(i)] for i in args.layers.split(",")] if args.layers else LAYERS
    results = []
    for precision in args.precisions.split(","):
        for size, channels, groups, stride in chosen:
            runs, flops = layer_runs(args.batch, size, channels, groups, stride, DTYPES[precision])
            row = {"precision": precision, "layer": f"{size}x{size}x{channels} g{groups} s{stride}"}
            for direction, both in runs.items():
                first = {kernel: timed(fn, 1) for kernel, fn in both.items()}
                repeats = {k: max(1, round(100 / ms)) for k, ms in first.items()}
                # A kernel 20x slower than the other is timed in 2 rounds: the verdict is clear.
                slow = {k for k, ms in first.items() if ms > 20 * min(first.values())}
                times = {"onednn": [], "xla": []}
                for round_ in range(args.rounds):
                    order = ["onednn", "xla"] if round_ % 2 == 0 else ["xla", "onednn"]
                    for kernel in order:
                        if kernel not in slow or round_ < 2:
                            times[kernel].append(timed(both[kernel], repeats[kernel]))
                ms = {k: statistics.median(v) for k, v in times.items()}
                row[direction] = {
                    "onednn_ms": round(ms["onednn"], 3),
                    "xla_ms": round(ms["xla"], 3),
                    "xla/onednn": round(ms["xla"] / ms["onednn"], 2),
                    "onednn_gflops": round(flops / ms["onednn"] / 1e6, 1),
                }
            print(json.dumps(row), flush=True)
            results.append(row)
    print(json.dumps({"batch": args.batch, "rows": results}, indent=1))


if __name__ == "__main__":
    main()

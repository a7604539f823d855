"""Depthwise convolutions: oneDNN's kernels against XLA's, per direction, at a network's shapes.

    python bench/depthwise_conv.py mobilenet_v3_large --batch 32 [--precision bf16] [--rounds 7]

Every depthwise convolution of the network (`zoo.summary`'s "depthwise_conv" rows, each shape
once, with how often it occurs) is timed in its three directions, forward, input gradient and
weight gradient: on the extension's oneDNN call (`csrc/onednn_conv.cc`, whatever kernel oneDNN
picks: its name is printed) and on XLA's convolution (the forward's linear transposes for the
gradients, as `zoo.ops` runs them), each jitted alone, in short blocks that alternate between
the two, after one untimed call. Prints one line per shape and direction (milliseconds per
call, medians over the rounds, and XLA / oneDNN), then the network's totals per direction, as
JSON lines; "planned" is what the zoo runs the direction on (`zoo.ops.conv`: oneDNN's kernel
in that dtype, or "xla"). The rule these measurements set: `conv.BF16_DEPTHWISE_WIDENS`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import zoo
import zoo.ops
from zoo.ops import conv, native

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
DIRECTIONS = {
    native.FORWARD: "forward",
    native.BACKWARD_DATA: "input_gradient",
    native.BACKWARD_WEIGHTS: "weight_gradient",
}


def depthwise_shapes(model: str, size: int) -> collections.Counter:
    """(input height, channels, kernel, stride) of each depthwise convolution -> its count."""
    shapes = {}  # module path -> shape (the input check traces the network once more)

    def record(next_fun, args, kwargs, context):
        layer = context.module
        if context.method_name == "__call__" and isinstance(layer, zoo.ops.Conv):
            _, height, _, channels = args[0].shape
            if layer.feature_group_count == channels > 1:
                stride = layer.strides if isinstance(layer.strides, int) else layer.strides[0]
                shapes[layer.path] = (height, channels, layer.kernel_size[0], stride)
        return next_fun(*args, **kwargs)

    module = zoo.create_model(model)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: nn.Module.init(module, jax.random.key(0), x), x)
    return collections.Counter(shapes.values())


def operands(geometry: conv.Geometry, direction: int, rng: np.random.Generator) -> tuple:
    shapes = {
        native.FORWARD: (geometry.lhs_shape, geometry.rhs_shape),
        native.BACKWARD_DATA: (geometry.out_shape, geometry.rhs_shape),
        native.BACKWARD_WEIGHTS: (geometry.lhs_shape, geometry.out_shape),
    }[direction]
    return tuple(jnp.asarray(rng.standard_normal(s), geometry.dtype) for s in shapes)


def timer(fn, args, block_s: float):
    fn(*args).block_until_ready()
    start, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - start < block_s / 4:
        fn(*args).block_until_ready()
        steps += 1
    steps = max(1, round(steps * 4))

    def run() -> float:
        fn(*args).block_until_ready()  # untimed: the first call after the other's
        begin = time.perf_counter()
        for _ in range(steps):
            result = fn(*args)
        result.block_until_ready()
        return 1e3 * (time.perf_counter() - begin) / steps

    return run


def measure(batch, shape, dtype, rounds, block_s, rng) -> list[dict]:
    height, channels, kernel, stride = shape
    pad = (kernel - 1) // 2
    geometry = conv.Geometry(
        (batch, height, height, channels),
        (kernel, kernel, 1, channels),
        jnp.dtype(dtype),
        (stride, stride),
        ((pad, pad), (pad, pad)),
        (1, 1),
        channels,
    )
    plan = conv.planned(geometry)
    team = plan.threads
    # oneDNN's own kernel in the convolution's dtype, whatever the plan chose.
    onednn_plan = dataclasses.replace(plan, kernels=(conv.ONEDNN,) * 3)
    rows = []
    for direction, label in DIRECTIONS.items():
        config = geometry.onednn_config(dtype, team)
        implementation = native.implementation(native.CONV, direction, config)[1]
        args = operands(geometry, direction, rng)
        runners = {
            "onednn": timer(
                jax.jit(lambda a, b, d=direction: conv.ONEDNN.run(onednn_plan, d, a, b)),
                args,
                block_s,
            ),
            "xla": timer(
                jax.jit(lambda a, b, d=direction: conv._xla_direction(geometry, None, d, a, b)),
                args,
                block_s,
            ),
        }
        times = {name: [] for name in runners}
        for r in range(rounds):
            for name in runners if r % 2 == 0 else reversed(list(runners)):
                times[name].append(runners[name]())
        ms = {name: statistics.median(values) for name, values in times.items()}
        rows.append(
            {
                "shape": f"{batch}x{height}x{height}x{channels} k{kernel} s{stride}",
                "direction": label,
                "onednn_kernel": implementation,
                "threads": team,
                "onednn_ms": round(ms["onednn"], 4),
                "xla_ms": round(ms["xla"], 4),
                "xla_over_onednn": round(ms["xla"] / ms["onednn"], 2),
                "planned": plan.kernels[direction].name if plan.kernels[direction] else "xla",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block-s", type=float, default=0.2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    totals: dict = collections.defaultdict(
        lambda: {"onednn_ms": 0.0, "xla_ms": 0.0, "best_ms": 0.0}
    )
    for shape, count in sorted(depthwise_shapes(args.model, args.size).items()):
        for row in measure(
            args.batch, shape, DTYPES[args.precision], args.rounds, args.block_s, rng
        ):
            row["count"] = count
            print(json.dumps(row), flush=True)
            total = totals[row["direction"]]
            total["onednn_ms"] += count * row["onednn_ms"]
            total["xla_ms"] += count * row["xla_ms"]
            total["best_ms"] += count * min(row["onednn_ms"], row["xla_ms"])
    for direction, total in totals.items():
        print(
            json.dumps(
                {
                    "model": args.model,
                    "batch": args.batch,
                    "precision": args.precision,
                    "direction": direction,
                    **{k: round(v, 2) for k, v in total.items()},
                    "load_average": os.getloadavg(),
                }
            )
        )


if __name__ == "__main__":
    main()

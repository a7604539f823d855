"""Batch norm at channel counts off oneDNN's vector width: oneDNN's kernel against XLA's.

    python bench/batch_norm_channels.py [--mode training|inference] [--batch 32] [--rounds 7]

MobileNet V3-Large's and EfficientNet-B0's batch-norm shapes whose channels are not a multiple
of 16 (and, for reference, two that are): training mode's forward and backward together
(`jax.grad` of a sum of the output), or inference's forward pass, jitted, on oneDNN's kernel
(whatever it picks for the shape: its name is printed) and on XLA's ops
(`zoo.ops.portable()`), in short blocks that alternate between the two. Prints one JSON line
per shape and precision (ms per call, medians; XLA / oneDNN: above 1, oneDNN is faster). The
rule these measurements set: `zoo.ops.batch_norm._kernel_pays`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import zoo
from zoo import ops
from zoo.ops import batch_norm, native

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# (map size, channels): MobileNet V3-Large's and EfficientNet-B0's, two full-width ones last.
SHAPES = [(112, 24), (56, 72), (28, 40), (28, 120), (14, 184), (14, 200), (56, 64), (28, 128)]
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def training(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    y, _, _ = ops.batch_norm_training(x, scale, bias, 1e-5)
    return jnp.sum(y.astype(jnp.float32) ** 2)


def inference(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    return ops.batch_norm_inference(x, bias, scale, scale, bias, 1e-5)


def compiled(x, scale, bias, onednn: bool, mode: str):
    """Training mode's value and gradients, or inference's forward pass, compiled on oneDNN's
    kernel (the channel rule off) or XLA."""
    if mode == "training":
        grad = jax.jit(jax.value_and_grad(training, argnums=(0, 1, 2)))
    else:
        grad = jax.jit(inference)
    if onednn:
        found = lambda kind, shape, config_of: native.implementation(  # noqa: E731
            native.BATCH_NORM, kind, config_of(shape)
        )[0]
        with mock.patch.object(batch_norm, "_kernel_pays", found):  # whatever oneDNN picks
            return grad.lower(x, scale, bias).compile()
    with ops.portable():
        return grad.lower(x, scale, bias).compile()


def timed(fn, args, block_s: float) -> float:
    jax.block_until_ready(fn(*args))
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < block_s:
        jax.block_until_ready(fn(*args))
        calls += 1
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--block-s", type=float, default=0.2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--mode", choices=["training", "inference"], default="training")
    args = parser.parse_args()
    for precision in args.precisions.split(","):
        for size, channels in SHAPES:
            shape = (args.batch, size, size, channels)
            x = jax.random.normal(jax.random.key(0), shape, DTYPES[precision])
            scale, bias = jnp.ones(channels), jnp.zeros(channels)
            kind = native.TRAINING if args.mode == "training" else native.INFERENCE
            config = batch_norm._config(kind, shape, DTYPES[precision], 1e-5, False, 1)
            _, kernel = native.implementation(native.BATCH_NORM, kind, config)
            runs = {
                "onednn": compiled(x, scale, bias, True, args.mode),
                "xla": compiled(x, scale, bias, False, args.mode),
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for r in range(args.rounds):
                for name in runs if r % 2 == 0 else reversed(list(runs)):
                    times[name].append(timed(runs[name], (x, scale, bias), args.block_s))
            ms = {name: statistics.median(values) for name, values in times.items()}
            print(
                json.dumps(
                    {
                        "mode": args.mode,
                        "precision": precision,
                        "shape": "x".join(map(str, shape)),
                        "onednn_kernel": kernel,
                        "onednn_ms": round(ms["onednn"], 3),
                        "xla_ms": round(ms["xla"], 3),
                        "xla_over_onednn": round(ms["xla"] / ms["onednn"], 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

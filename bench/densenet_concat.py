"""DenseNet's growing feature map: concatenated anew by every layer, or written into one buffer.

    python bench/densenet_concat.py [--rounds 9] [--batch 16] [--precision fp32]

A dense block (Huang et al. 2017) feeds layer l the concatenation of the block's input and
every earlier layer's output. Two ways to build it, timed interleaved in one process on
densenet121's four blocks (train step: forward and backward in train mode, and inference):

- concatenate: `x = jnp.concatenate([x, new], -1)` after every layer (PyTorch's `torch.cat`);
- buffer: one (N, H, W, C_final) buffer allocated per block, each layer's output written into
  its channels with `lax.dynamic_update_slice` (in place, XLA's buffer assignment permitting),
  and each layer reading the channels filled so far as a slice.

Prints ms per call of each (medians) and their ratio, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

import zoo
from zoo.models.layers import BatchNorm
from zoo.ops import Conv

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists

GROWTH, BN_SIZE = 32, 4
# densenet121 at 224x224: (layers, input channels, map size) of each dense block.
BLOCKS = {
    "block1": (6, 64, 56),
    "block2": (12, 128, 28),
    "block3": (24, 256, 14),
    "block4": (16, 512, 7),
}


class Layer(nn.Module):
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train):
        x = BatchNorm(not train, relu=True, dtype=self.dtype, name="norm1")(x)
        x = Conv(BN_SIZE * GROWTH, (1, 1), use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = BatchNorm(not train, relu=True, dtype=self.dtype, name="norm2")(x)
        return Conv(
            GROWTH, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="conv2"
        )(x)


class Block(nn.Module):
    layers: int
    buffer: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train):
        if not self.buffer:
            for i in range(self.layers):
                x = jnp.concatenate([x, Layer(self.dtype, name=f"layer{i}")(x, train)], -1)
            return x
        n, h, w, c = x.shape
        buffer = jnp.zeros((n, h, w, c + self.layers * GROWTH), x.dtype)
        buffer = lax.dynamic_update_slice(buffer, x, (0, 0, 0, 0))
        for i in range(self.layers):
            filled = c + i * GROWTH
            new = Layer(self.dtype, name=f"layer{i}")(buffer[..., :filled], train)
            buffer = lax.dynamic_update_slice(buffer, new.astype(x.dtype), (0, 0, 0, filled))
        return buffer


def runners(layers, channels, size, batch, buffer, dtype):
    block = Block(layers, buffer, dtype)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels), dtype)
    variables = block.init(jax.random.key(1), x, False)

    def loss(params, stats, x):
        y, updates = block.apply(
            {"params": params, "batch_stats": stats}, x, True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(y.astype(jnp.float32))), updates

    grad = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
    infer = jax.jit(lambda v, x: block.apply(v, x, False))
    params, stats = variables["params"], variables["batch_stats"]
    jax.block_until_ready(grad(params, stats, x))
    jax.block_until_ready(infer(variables, x))
    return (
        lambda: jax.block_until_ready(grad(params, stats, x)),
        lambda: jax.block_until_ready(infer(variables, x)),
    )


def timed(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    dtype = jnp.float32 if args.precision == "fp32" else jnp.bfloat16
    results = {}
    for name, (layers, channels, size) in BLOCKS.items():
        both = {
            kind: runners(layers, channels, size, args.batch, kind == "buffer", dtype)
            for kind in ("concatenate", "buffer")
        }
        for task, index in (("train", 0), ("infer", 1)):
            times = {kind: [] for kind in both}
            for round_ in range(args.rounds):
                order = list(both) if round_ % 2 == 0 else list(both)[::-1]
                for kind in order:
                    fn = both[kind][index]
                    fn()
                    times[kind].append(timed(fn, 3))
            medians = {kind: round(statistics.median(t), 2) for kind, t in times.items()}
            ratio = round(medians["concatenate"] / medians["buffer"], 3)
            results[f"{name}/{task}"] = {**medians, "concatenate/buffer": ratio}
            print(name, task, results[f"{name}/{task}"], flush=True)
    print(json.dumps({"batch": args.batch, "precision": args.precision, "ms": results}, indent=1))


if __name__ == "__main__":
    main()

"""Attention on CPU: `jax.nn.dot_product_attention` (XLA) against the zoo's einsum form, and
PyTorch's `scaled_dot_product_attention`, interleaved in one process.

    python bench/attention.py [--batch 8] [--tokens 197] [--heads 12] [--head-size 64]
                              [--precisions fp32,bf16] [--rounds 9]

Times the forward and the forward + backward (gradients of all three inputs) of each, alone
(`zoo.ops.attention.reference_attention` is what `zoo.ops.dot_product_attention` runs on CPU),
as the median of interleaved rounds. The defaults are one ViT-B/16 block at 224x224, batch 8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402
from zoo.ops.attention import reference_attention  # noqa: E402

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists


def seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def jax_runs(q, k, v) -> dict[str, Callable[[], object]]:
    runs = {}
    for name, attention in (
        ("jax.nn (XLA)", jax.nn.dot_product_attention),
        ("zoo einsum", reference_attention),
    ):
        forward = jax.jit(attention)

        def loss(q, k, v, attention=attention):
            return jnp.sum(jnp.square(attention(q, k, v).astype(jnp.float32)))

        backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        runs[f"{name} fwd"] = lambda f=forward: jax.block_until_ready(f(q, k, v))
        runs[f"{name} fwd+bwd"] = lambda f=backward: jax.block_until_ready(f(q, k, v))
    return runs


def torch_runs(q, k, v, bf16: bool) -> dict[str, Callable[[], object]]:
    def as_torch(x):  # (B, T, N, H) -> (B, N, T, H), what SDPA takes
        t = torch.from_numpy(np.array(x, np.float32)).transpose(1, 2).contiguous()
        return t.bfloat16() if bf16 else t

    tq, tk, tv = as_torch(q), as_torch(k), as_torch(v)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def forward():
        with torch.inference_mode():
            return sdpa(tq, tk, tv)

    def backward():
        a, b, c = (t.detach().requires_grad_() for t in (tq, tk, tv))
        sdpa(a, b, c).float().square().sum().backward()

    return {"torch sdpa fwd": forward, "torch sdpa fwd+bwd": backward}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = (args.batch, args.tokens, args.heads, args.head_size)
    print(f"q, k, v {shape}; {args.rounds} interleaved rounds of {args.repeats} calls each")
    for precision in args.precisions.split(","):
        dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[precision]
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
        runs = {**jax_runs(q, k, v), **torch_runs(q, k, v, precision == "bf16")}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.rounds):
            names = list(runs) if round_ % 2 == 0 else list(runs)[::-1]
            for name in names:
                times[name].append(seconds(runs[name], args.repeats))
        for name, values in times.items():
            print(f"{precision}  {name:22s} {statistics.median(values) * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

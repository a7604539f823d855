"""A proposal for LeNet-5 (not used by the zoo yet): its convolutions as one matmul each.

XLA:CPU's convolutions are slow when the channel counts are tiny: LeNet-5's c1 (1 -> 6
channels, 5x5) runs at ~15 GFLOP/s, and the input gradient of c3 (6 -> 16) is 3x its forward.
Together they are most of LeNet's train step. `row_gemm_conv` computes a VALID, stride-1
convolution as a single matmul: the `kh` kernel-row-shifted image rows, concatenated, times a
banded (Toeplitz) matrix built from the kernel, (N*Ho, kh*W*Cin) @ (kh*W*Cin, Wo*Cout). The
band multiplies by zeros (6.4x the useful MACs for c1, 2.8x for c3), but a matmul of that shape
runs at ~200 GFLOP/s here, and autodiff of it gives matmul gradients too.

`RowGemmConv` is a drop-in for `nn.Conv(features, (k, k), padding="VALID")`: same parameter
names and shapes (checkpoints and the torchvision importer are unaffected), same values to float
rounding (the sum runs in another order). Run this file to check both and time LeNet-5's train
step and forward pass with each, interleaved in one process:

    python bench/row_gemm_conv.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))


def row_gemm_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID, stride-1 convolution of NHWC `x` with an HWIO `kernel`, as one matmul."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    out_h, out_w = h - kh + 1, w - kw + 1
    # band[j, a, b] = 1 where input column a = output column b + j.
    band = np.zeros((kw, w, out_w), np.float32)
    for j in range(kw):
        band[j, np.arange(out_w) + j, np.arange(out_w)] = 1.0
    # toeplitz[i, a, c, b, d] = kernel[i, a - b, c, d] (zero off the band).
    toeplitz = jnp.einsum("jab,ijcd->iacbd", jnp.asarray(band, kernel.dtype), kernel)
    toeplitz = toeplitz.reshape(kh * w * cin, out_w * cout)
    rows = x.reshape(n, h, w * cin)
    shifted = jnp.concatenate([rows[:, i : i + out_h] for i in range(kh)], axis=-1)
    y = shifted.reshape(n * out_h, kh * w * cin) @ toeplitz
    return y.reshape(n, out_h, out_w, cout)


class RowGemmConv(nn.Module):
    """`nn.Conv(features, kernel_size, padding="VALID")` computed by `row_gemm_conv`."""

    features: int
    kernel_size: tuple[int, int]
    padding: str = "VALID"
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding != "VALID":
            raise ValueError("RowGemmConv computes VALID convolutions only")
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape)
        dtype = self.dtype or x.dtype
        y = row_gemm_conv(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y


def main() -> None:
    import zoo  # applies the XLA:CPU defaults
    import zoo.models.lenet as lenet
    from train.config import TrainConfig
    from train.state import create_train_state, make_optimizer
    from train.step import train_step

    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((128, 32, 32, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 128), jnp.int32),
    }
    tx = make_optimizer(TrainConfig(model="lenet5", epochs=1), steps_per_epoch=100)
    state = create_train_state(zoo.create_model("lenet5"), tx, (32, 32, 1), jax.random.key(0))

    class Swapped:  # lenet.nn with Conv replaced, for tracing the proposal
        def __getattr__(self, name: str) -> Any:
            return RowGemmConv if name == "Conv" else getattr(nn, name)

    train, infer = {}, {}
    for variant in ("nn.Conv", "RowGemmConv"):
        lenet.nn = nn if variant == "nn.Conv" else Swapped()
        model = zoo.create_model("lenet5")
        train[variant] = (
            jax.jit(lambda s, b: train_step(s, b), donate_argnums=0).lower(state, batch).compile()
        )
        infer[variant] = (
            jax.jit(lambda v, x, m=model: m.apply(v, x)).lower(state.variables, batch["image"])
        ).compile()
    lenet.nn = nn

    outputs = [infer[v](state.variables, batch["image"]) for v in infer]
    print(f"forward: max |difference| {float(jnp.max(jnp.abs(outputs[0] - outputs[1]))):.2e}")
    copies = {v: jax.tree.map(jnp.copy, state) for v in train}
    stepped = {v: train[v](copies[v], batch) for v in train}
    loss = {v: float(stepped[v][1]["loss_sum"]) for v in train}
    print(f"train step loss sums: {loss}")
    states = {v: stepped[v][0] for v in train}

    times: dict[str, list[float]] = {f"{k} {v}": [] for k in ("train", "infer") for v in train}
    for round_ in range(30):
        for variant in list(train) if round_ % 2 else list(train)[::-1]:
            start = time.perf_counter()
            for _ in range(10):
                states[variant], metrics = train[variant](states[variant], batch)
            jax.block_until_ready((states[variant], metrics))
            times[f"train {variant}"].append((time.perf_counter() - start) / 10)
            start = time.perf_counter()
            for _ in range(10):
                logits = infer[variant](state.variables, batch["image"])
            jax.block_until_ready(logits)
            times[f"infer {variant}"].append((time.perf_counter() - start) / 10)
    for name, values in times.items():
        print(
            f"{name:18s} median {1e3 * statistics.median(values):6.2f} ms "
            f"({128 / statistics.median(values):8,.0f} img/s), best {1e3 * min(values):6.2f} ms"
        )


if __name__ == "__main__":
    main()

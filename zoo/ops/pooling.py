"""Pooling of NHWC activations: max pooling on the extension's kernels on CPU and XLA's ops
elsewhere, and the mean over height and width (`spatial_mean`).

`max_pool(x, window, stride, padding)` is `nn.max_pool(x, (window,) * 2, (stride,) * 2,
explicit_padding(padding))`, padding counting as -inf. The values are always its values (NaN
where a window holds a NaN); the gradient is bit for bit select-and-scatter's (the one XLA
derives for `nn.max_pool`): each window sends its output gradient to one position, found by
scanning the window in row-major order, padding included, and moving to each input the
current choice is not >= (the first maximum, where there is no NaN; dropped where it is
padding), and an input chosen by several windows receives their sum, added in row-major
window order. Floats narrower than float32 pool in float32: the same maxima, and their
gradients' sum rounded once (select-and-scatter in bf16 rounds each add).

On CPU the pooling runs as, in order of preference:
1. the extension's kernels (`csrc/max_pool.cc`): a forward that also
   returns each window's choice (a byte per output: the residual, instead of the input) and
   a backward that gathers each input's gradient through it; float32 and bfloat16 (read and
   written as such, computed in float32), other floats widened to float32; on one device,
   for windows of up to 16 x 16. oneDNN's max pooling is not used: it skips NaNs and turns a
   window of -inf into -FLT_MAX.
2. XLA, with a gradient built from elementwise masks of each window's choice, summed per
   stride phase and interleaved once, which XLA:CPU runs faster than its select-and-scatter
   (bench/README.md, "Max pool's mask gradient").
GPU and TPU compilers have their own fast select-and-scatter: there (and for inputs that are
not floating-point NHWC arrays, or maps smaller than the window) it is `nn.max_pool`
unchanged, chosen inside the same jitted function (`zoo.ops.on_cpu`); under
`zoo.ops.portable()` it is `nn.max_pool` everywhere, what an exported function runs best on
any backend. Both CPU paths differentiate to any order in both modes (`zoo.ops.autodiff`):
their own gradient first, XLA's derivatives of `nn.max_pool` beyond it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.ops import autodiff, backend, native, sharding

_F32 = jnp.float32
# The dtypes the kernels read and write; others run in float32.
NATIVE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# The kernels' argmax is a byte: a window of at most 256 positions.
LARGEST_NATIVE_WINDOW = 16


def reference_max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """`nn.max_pool` with `padding` rows and columns of -inf on each side."""
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (window, window), (stride, stride), pad)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """`reference_max_pool(x, window, stride, padding)`, fast on CPU (see module)."""

    def reference(x: jax.Array) -> jax.Array:
        return reference_max_pool(x, window, stride, padding)

    if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating) or backend.tracing_portably():
        return reference(x)
    pool = _Pool.of(x, window, stride, padding)
    if 0 in (*pool.shape, *pool.out_shape):  # nothing to pool (a map smaller than the window)
        return reference(x)
    if _runs_natively(x, pool):
        return _native_max_pool(x.astype(pool.dtype), pool).astype(x.dtype)
    # Narrower floats pool as float32 (max is exact in it): XLA:CPU widens their reduce-window
    # anyway, but then cannot fuse the mask gradient's slices.
    wide = jnp.promote_types(x.dtype, _F32)

    def cpu(x: jax.Array) -> jax.Array:
        return _mask_max_pool(x.astype(wide), window, stride, padding).astype(x.dtype)

    return backend.on_cpu(cpu, reference, x)


def spatial_mean(x: jax.Array) -> jax.Array:
    """The mean of NHWC `x` over height and width, (N, H, W, C) -> (N, C), summed in float32
    (at least) and rounded once to `x`'s dtype.

    The sum is a contraction with ones, not a reduction: XLA:CPU hands a reduction to YNNPACK
    together with the elementwise ops before it, and there a ReLU before the mean computes
    max(NaN, 0) = 0, so a NaN feature map would average to a finite one. A contraction keeps
    the NaN on every backend.
    """
    batch, height, width, channels = x.shape
    accumulate = jnp.promote_types(x.dtype, _F32)
    pixels = x.reshape(batch, height * width, channels)
    ones = jnp.ones((height * width,), accumulate)
    total = jnp.einsum("npc,p->nc", pixels, ones, preferred_element_type=accumulate)
    return (total / (height * width)).astype(x.dtype)


# --- the extension's kernels -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Pool:
    """A pooling of NHWC `shape` to `out_shape` in the kernels' `dtype`, on `num_threads`
    threads, of an input varying over the manual (`shard_map`) axes `varying`."""

    shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    dtype: Any
    window: int
    stride: int
    padding: int
    num_threads: int
    varying: frozenset

    @classmethod
    def of(cls, x: jax.Array, window: int, stride: int, padding: int) -> _Pool:
        out = jax.eval_shape(lambda x: reference_max_pool(x, window, stride, padding), x).shape
        dtype = jnp.dtype(x.dtype) if x.dtype in NATIVE_DTYPES else jnp.dtype(_F32)
        threads = backend.pass_team(x, dtype)  # over the bytes the kernels read
        return cls(x.shape, out, dtype, window, stride, padding, threads, sharding.varying(x))

    def ffi(self, target: str, results: tuple[tuple[tuple[int, ...], Any], ...], *operands):
        """`target` on `operands` (the whole batch), its results of those (shape, dtype)."""
        return backend.call(
            target,
            tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in results),
            *operands,
            batch=sharding.whole_batch,
            window=self.window,
            stride=self.stride,
            padding=self.padding,
            num_threads=self.num_threads,
        )


def _runs_natively(x: jax.Array, pool: _Pool) -> bool:
    return (
        backend.native_applies()
        and backend.single_device()
        and jnp.promote_types(x.dtype, _F32) == _F32
        and pool.window <= LARGEST_NATIVE_WINDOW
        and native.library() is not None
    )


def _native_max_pool(x: jax.Array, pool: _Pool) -> jax.Array:
    """The kernels' pooling, differentiable to any order (`zoo.ops.autodiff`): the forward
    keeps each window's choice, through which the backward gathers the gradient."""

    def forward(x):
        y, argmax = _native_forward(x, pool)
        return (y,), (argmax,)

    def cotangent(primals, residuals, cotangents):
        ((argmax,), (g,)) = residuals, cotangents
        return _native_backward(pool, argmax, g)

    def reference(x):
        return (reference_max_pool(x, pool.window, pool.stride, pool.padding),)

    return backend.native_op("max_pool", reference, forward, cotangent)(x)[0]


def _native_forward(x: jax.Array, pool: _Pool) -> tuple[jax.Array, jax.Array]:
    forward, _ = native.MAX_POOL_TARGETS
    return pool.ffi(forward, ((pool.out_shape, pool.dtype), (pool.out_shape, jnp.uint8)), x)


def _native_backward(pool: _Pool, argmax: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    _, backward = native.MAX_POOL_TARGETS
    (d_x,) = pool.ffi(backward, ((pool.shape, pool.dtype),), g, argmax)
    return (sharding.cotangent_varying_over(d_x, pool.varying),)


# --- XLA -------------------------------------------------------------------------------------


def _mask_max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """`reference_max_pool` with the mask gradient (`_mask_backward`), differentiable to any
    order (`zoo.ops.autodiff`)."""

    def reference(x):
        return (reference_max_pool(x, window, stride, padding),)

    def cotangent(primals, residuals, cotangents):
        return _mask_backward(window, stride, padding, *primals, *cotangents)

    masked = autodiff.differentiable(
        lambda x: (reference(x), ()), reference, cotangent=cotangent, name="max_pool"
    )
    return masked(x)[0]


def _mask_backward(
    window: int, stride: int, padding: int, x: jax.Array, g: jax.Array
) -> tuple[jax.Array]:
    n, h, w, c = x.shape
    _, out_h, out_w, _ = g.shape
    k, s, p = window, stride, padding
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    # Select-and-scatter's choice: scanning the window in row-major order, padding included,
    # it moves to each offset whose input the current choice is not >= (the first maximum,
    # where there is no NaN).
    chosen, chosen_at = None, None
    for i in range(k):
        for j in range(k):
            candidate = jax.lax.slice(
                padded,
                (0, i, j, 0),
                (n, i + s * (out_h - 1) + 1, j + s * (out_w - 1) + 1, c),
                (1, s, s, 1),
            )
            if chosen is None:
                chosen, chosen_at = candidate, jnp.zeros(candidate.shape, jnp.int32)
                continue
            moves = ~(chosen >= candidate)
            chosen = jnp.where(moves, candidate, chosen)
            chosen_at = jnp.where(moves, i * k + j, chosen_at)
    # contributions[i, j]: the gradient that window offset (i, j) sends to its input.
    zero = jnp.zeros((), g.dtype)
    contributions = {
        (i, j): jnp.where(chosen_at == i * k + j, g, zero) for i in range(k) for j in range(k)
    }
    # Offset i = s * q + r writes row s * (a + q) + r of the padded input for window row a, so
    # phase r of the input rows is the sum over q of the contributions shifted down by q.
    # Windows are summed in row-major order, as select-and-scatter adds them: for a fixed
    # input position a larger shift q means an earlier window, so q runs downwards.
    shift = (k - 1) // s
    rows, cols = out_h + shift, out_w + shift
    phases = []
    for ri in range(s):
        phase_row = []
        for rj in range(s):
            total = jnp.zeros((n, rows, cols, c), g.dtype)
            for qi in reversed(range(len(range(ri, k, s)))):
                for qj in reversed(range(len(range(rj, k, s)))):
                    shifted = jnp.pad(
                        contributions[s * qi + ri, s * qj + rj],
                        ((0, 0), (qi, shift - qi), (qj, shift - qj), (0, 0)),
                    )
                    total = total + shifted
            phase_row.append(total)
        phases.append(jnp.stack(phase_row, axis=3))  # (n, rows, cols, s, c)
    grid = jnp.stack(phases, axis=2).reshape(n, rows * s, cols * s, c)
    full_h, full_w = h + 2 * p, w + 2 * p
    grid = jnp.pad(
        grid, ((0, 0), (0, max(0, full_h - rows * s)), (0, max(0, full_w - cols * s)), (0, 0))
    )
    return (grid[:, p : p + h, p : p + w],)

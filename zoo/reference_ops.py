"""Convolution and pooling written straight from the lecture's definitions.

CMU 10-315, "Neural Networks Applications for Images", defines convolution by its relaxed form,
cross-correlation (what every deep learning library calls "conv"):

    z[i, j] = sum_u sum_v x[i + u, j + v] * w[u, v]

With a stride S the window moves S cells at a time, z[i, j] reads x[S*i + u, S*j + v], and with
padding P the input gets P zeros on every side, for an output of floor((W - K + 2P) / S) + 1 per
spatial axis. Pooling slides the same window but takes the max or the mean instead of a weighted
sum. Each function below loops over the kernel offsets (u, v) and combines strided slices of the
input, so the code reads like the sum above while every (i, j) is computed at once.

These are references for teaching and for testing the fast path (`jax.lax.conv_general_dilated`,
`flax.linen.Conv`, `flax.linen.max_pool`); they are not the fast path and the models do not use
them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from zoo.errors import InvalidValueError
from zoo.formulas import conv_output_size

# The lecture's Sobel kernels: K1 responds to left-to-right increases, K2 = K1.T to top-to-bottom.
# NumPy, so that importing this module does not start a JAX backend.
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
SOBEL_Y = SOBEL_X.T


def cross_correlate2d(
    x: ArrayLike, w: ArrayLike, *, stride: int = 1, padding: int = 0
) -> jax.Array:
    """Cross-correlate one (H, W) image with one (KH, KW) kernel, the lecture's 2-D form.

    Args:
      x: the image, shape (H, W).
      w: the kernel, shape (KH, KW).
      stride: the step S between neighbouring windows, on both axes.
      padding: the zeros P added on every side before sliding the window.

    Returns:
      z of shape (floor((H - KH + 2P) / S) + 1, floor((W - KW + 2P) / S) + 1), where
      z[i, j] = sum_u sum_v x_padded[S*i + u, S*j + v] * w[u, v].
    """
    x, w = jnp.asarray(x), jnp.asarray(w)
    _check_rank(x, 2, "x", "(H, W)")
    _check_rank(w, 2, "w", "(KH, KW)")
    out_hw = _output_hw(x.shape, w.shape, stride, padding)
    # Run the image through the batched layout as one example with one channel.
    x_nhwc = _pad(x[None, :, :, None], padding, 0)
    z = sum(w[u, v] * x_uv for (u, v), x_uv in _offset_views(x_nhwc, w.shape, stride, out_hw))
    return z[0, :, :, 0]


def conv2d(
    x_nhwc: ArrayLike,
    w_hwio: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
) -> jax.Array:
    """A convolutional layer: batched, multi-channel cross-correlation plus an optional bias.

    Each output channel o is one kernel slid over all input channels c and summed over them:
    z[n, i, j, o] = sum_u sum_v sum_c x_padded[n, S*i + u, S*j + v, c] * w[u, v, c, o] + b[o].

    Args:
      x_nhwc: the images, shape (N, H, W, C_in).
      w_hwio: the kernels, shape (KH, KW, C_in, C_out): the layout of `flax.linen.Conv`.
      bias: an optional (C_out,) vector added to every output position.
      stride: the step S between neighbouring windows, on both axes.
      padding: the zeros P added on every side of H and W.

    Returns:
      z of shape (N, floor((H - KH + 2P) / S) + 1, floor((W - KW + 2P) / S) + 1, C_out).
    """
    x, w = jnp.asarray(x_nhwc), jnp.asarray(w_hwio)
    _check_rank(x, 4, "x_nhwc", "(N, H, W, C_in)")
    _check_rank(w, 4, "w_hwio", "(KH, KW, C_in, C_out)")
    if w.shape[2] != x.shape[3]:
        raise InvalidValueError(
            f"w_hwio expects C_in={w.shape[2]} input channels but x_nhwc of shape "
            f"{x.shape} has {x.shape[3]}"
        )
    out_hw = _output_hw(x.shape[1:3], w.shape[:2], stride, padding)
    x = _pad(x, padding, 0)
    # (N, OH, OW, C_in) @ (C_in, C_out) sums over the input channels for one offset (u, v).
    # HIGHEST keeps accelerators from rounding the reference through bfloat16 or TF32.
    z = sum(
        jnp.matmul(x_uv, w[u, v], precision=jax.lax.Precision.HIGHEST)
        for (u, v), x_uv in _offset_views(x, w.shape[:2], stride, out_hw)
    )
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (w.shape[3],):
            raise InvalidValueError(
                f"bias must have shape ({w.shape[3]},) to match C_out of w_hwio "
                f"{w.shape}, got {bias.shape}"
            )
        z = z + bias
    return z


def max_pool2d(x: ArrayLike, window: int, stride: int | None = None, padding: int = 0) -> jax.Array:
    """The largest value in each window, for an (H, W) image or an (N, H, W, C) batch.

    Args:
      x: an (H, W) image or (N, H, W, C) batch; channels are pooled separately.
      window: the side K of the square window.
      stride: the step S between windows; None means S = K, the lecture's non-overlapping
        pooling (`flax.linen.max_pool` defaults to a stride of 1 instead).
      padding: the cells P added on every side; they hold -inf (the lowest integer for integer
        inputs), so a padded cell never wins.

    Returns:
      An array of x's rank and dtype with each spatial side floor((W - K + 2P) / S) + 1.
    """
    x = jnp.asarray(x)
    x_nhwc, stride, out_hw = _pooling_setup(x, window, stride, padding)
    padded = _pad(x_nhwc, padding, _lowest_value(x.dtype))
    views = (x_uv for _, x_uv in _offset_views(padded, (window, window), stride, out_hw))
    return _with_rank(functools.reduce(jnp.maximum, views), x.ndim)


def avg_pool2d(
    x: ArrayLike,
    window: int,
    stride: int | None = None,
    padding: int = 0,
    *,
    count_include_pad: bool = True,
) -> jax.Array:
    """The mean of each window, for an (H, W) image or an (N, H, W, C) batch.

    Args:
      x: an (H, W) image or (N, H, W, C) batch; channels are pooled separately.
      window: the side K of the square window.
      stride: the step S between windows; None means S = K (`flax.linen.avg_pool` defaults to 1).
      padding: the zeros P added on every side.
      count_include_pad: divide every window by K * K, padded zeros included (the default of
        Flax and PyTorch); if False, divide by the number of real input cells in the window.

    Returns:
      A floating array of x's rank with each spatial side floor((W - K + 2P) / S) + 1.
    """
    x = jnp.asarray(x)
    x_nhwc, stride, out_hw = _pooling_setup(x, window, stride, padding)

    def window_sums(values: jax.Array) -> jax.Array:
        views = _offset_views(_pad(values, padding, 0), (window, window), stride, out_hw)
        return sum(x_uv for _, x_uv in views)

    if count_include_pad:
        cells_per_window = window * window
    else:
        # Summing a map of ones counts the real (unpadded) cells under each window.
        cells_per_window = window_sums(jnp.ones_like(x_nhwc[..., :1]))
    return _with_rank(window_sums(x_nhwc) / cells_per_window, x.ndim)


def sobel_edges(image: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The lecture's Sobel edge detector on one (H, W) image, zero-padded by 1.

    Returns:
      (gx, gy, magnitude), each (H, W): gx is the response to K1 = [[-1, 0, 1], [-2, 0, 2],
      [-1, 0, 1]] (vertical edges), gy to K2 = K1.T (horizontal edges), and
      magnitude = sqrt(gx**2 + gy**2).
    """
    image = jnp.asarray(image)
    _check_rank(image, 2, "image", "(H, W)")
    gx = cross_correlate2d(image, SOBEL_X, padding=1)
    gy = cross_correlate2d(image, SOBEL_Y, padding=1)
    return gx, gy, jnp.hypot(gx, gy)


def _offset_views(
    x_nhwc: jax.Array, kernel_hw: tuple[int, int], stride: int, out_hw: tuple[int, int]
) -> Iterator[tuple[tuple[int, int], jax.Array]]:
    """Yield ((u, v), x[:, S*i + u, S*j + v, :] for every output (i, j)), one per kernel offset.

    The view for (u, v) holds the input cells that kernel weight w[u, v] multiplies, one per
    output position, so a convolution is the sum over (u, v) of view * w[u, v].
    """
    (kh, kw), (out_h, out_w) = kernel_hw, out_hw
    batch, _, _, channels = x_nhwc.shape
    # From (u, v) to the corner of the last window; every S-th cell of it is under w[u, v]. The
    # caller checked that (out - 1) * S + K fits the padded input, so no start is ever clamped.
    span = (batch, stride * (out_h - 1) + 1, stride * (out_w - 1) + 1, channels)
    for u in range(kh):
        for v in range(kw):
            # A dynamic slice takes (u, v) as values, not as part of the op, so eager mode
            # compiles one slice for all K*K offsets instead of one per offset; under jit the
            # offsets are constants and it is a plain slice.
            block = jax.lax.dynamic_slice(x_nhwc, (0, u, v, 0), span)
            yield (u, v), block[:, ::stride, ::stride, :]


def _pooling_setup(
    x: jax.Array, window: int, stride: int | None, padding: int
) -> tuple[jax.Array, int, tuple[int, int]]:
    """Check a pooling call; return x as NHWC, the stride (S = K if None) and the output (H, W)."""
    if x.ndim not in (2, 4):
        raise InvalidValueError(
            f"x must be an (H, W) image or an (N, H, W, C) batch, got shape {x.shape}"
        )
    stride = window if stride is None else stride
    x_nhwc = x[None, :, :, None] if x.ndim == 2 else x
    out_hw = _output_hw(x_nhwc.shape[1:3], (window, window), stride, padding, kernel_name="window")
    return x_nhwc, stride, out_hw


def _with_rank(y_nhwc: jax.Array, ndim: int) -> jax.Array:
    """Undo the lift of an (H, W) image to a batch of one single-channel image."""
    return y_nhwc[0, :, :, 0] if ndim == 2 else y_nhwc


def _output_hw(
    in_hw: tuple[int, ...],
    kernel_hw: tuple[int, ...],
    stride: int,
    padding: int,
    *,
    kernel_name: str = "kernel",
) -> tuple[int, int]:
    """floor((W - K + 2P) / S) + 1 per spatial axis, after checking the window fits."""
    if not all(_is_int(k) and k >= 1 for k in kernel_hw):
        raise InvalidValueError(
            f"{kernel_name} sides must be positive integers, got {tuple(kernel_hw)}"
        )
    if not _is_int(stride) or stride < 1:
        raise InvalidValueError(f"stride must be a positive integer, got {stride!r}")
    if not _is_int(padding) or padding < 0:
        raise InvalidValueError(f"padding must be a non-negative integer, got {padding!r}")
    padded_hw = tuple(side + 2 * padding for side in in_hw)
    if any(k > side for k, side in zip(kernel_hw, padded_hw, strict=True)):
        raise InvalidValueError(
            f"{kernel_name} {_hw(kernel_hw)} is larger than the padded input: {_hw(in_hw)} "
            f"padded by {padding} on each side is {_hw(padded_hw)}"
        )
    out_h, out_w = (
        conv_output_size(side, k, stride, padding) for side, k in zip(in_hw, kernel_hw, strict=True)
    )
    return out_h, out_w


def _check_rank(array: jax.Array, rank: int, name: str, layout: str) -> None:
    if array.ndim != rank:
        raise InvalidValueError(f"{name} must have shape {layout}, got shape {array.shape}")


def _pad(x_nhwc: jax.Array, padding: int, value: float | int) -> jax.Array:
    """Pad H and W by `padding` cells of `value` on every side."""
    spatial = (padding, padding)
    return jnp.pad(x_nhwc, ((0, 0), spatial, spatial, (0, 0)), constant_values=value)


def _lowest_value(dtype: jnp.dtype) -> float | int:
    """The identity of max for this dtype: -inf for floats, the minimum for integers."""
    return -jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else jnp.iinfo(dtype).min


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in shape)

"""The bf16 3x3 weight gradient (`csrc/bf16_conv3x3_weights.cc`): which convolutions run it, and
that it equals float64's sums of the same bf16 products, rounded once to bf16.

Tolerance per element: 2^-8 of its own magnitude (bf16's rounding is at most 2^-9) plus 1e-5 of
the largest (float32's sums in another order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_native_conv import NHWC

from zoo import ops
from zoo.ops import conv, native

needs_kernel = pytest.mark.skipif(
    not (ops.native_available() and native.bf16_weights_available()),
    reason="runs on CPUs with AVX512-BF16, with the extension built",
)
PADDING = ((1, 1), (1, 1))


def operands(batch, height, width, channels, features, stride, seed=0):
    """bf16 inputs and output gradients of a 3x3 convolution padded by 1 at `stride`."""
    rng = np.random.default_rng(seed)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = jnp.asarray(rng.standard_normal((batch, height, width, channels)), jnp.bfloat16)
    d_y = jnp.asarray(rng.standard_normal((batch, out_h, out_w, features)), jnp.bfloat16)
    return x, d_y


def float64_weight_gradient(x, d_y, stride):
    """sum over n, h, w of x[n, s h + i - 1, s w + j - 1, c] * d_y[n, h, w, k], in float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    d_y = np.asarray(d_y, np.float64)
    out_h, out_w = d_y.shape[1:3]
    return np.stack(
        [
            np.stack(
                [
                    np.tensordot(
                        x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride],
                        d_y,
                        axes=([0, 1, 2], [0, 1, 2]),
                    )
                    for j in range(3)
                ]
            )
            for i in range(3)
        ]
    )


def weight_gradient(x, d_y, stride, features):
    """The zoo's convolution's weight gradient, and the native targets its HLO calls."""
    kernel = jnp.zeros((3, 3, x.shape[3], features), jnp.bfloat16)

    def gradient(x, kernel, d_y):
        conv_fn = lambda k: ops.conv_general_dilated(  # noqa: E731
            x, k, (stride, stride), PADDING, dimension_numbers=NHWC
        )
        return jax.vjp(conv_fn, kernel)[1](d_y)[0]

    hlo = jax.jit(gradient).lower(x, kernel, d_y).as_text()
    targets = {native.BF16_WEIGHTS_TARGET, native.CONV_TARGETS[native.BACKWARD_WEIGHTS]}
    return jax.jit(gradient)(x, kernel, d_y), {t for t in targets if t in hlo}


def assert_rounded_float64(result, x, d_y, stride):
    assert result.dtype == jnp.bfloat16
    expected = float64_weight_gradient(x, d_y, stride)
    error = np.abs(np.asarray(result, np.float64) - expected)
    assert np.all(error <= 2**-8 * np.abs(expected) + 1e-5 * np.abs(expected).max())


# (batch, height, width, channels, features, stride): each width of output-channel block (16,
# 32, 64 lanes), odd batches (a lone last image), odd sizes at both strides, rows split into
# bands (64 x 64 channels at 56 wide), several images per band, and products too large for
# per-thread sums (128 x 128 and up), on one chunk of pairs and on two (batch 80 at 14 x 14).
CASES = [
    (2, 8, 8, 16, 32, 1),
    (3, 9, 7, 16, 48, 1),
    (1, 5, 6, 32, 32, 1),
    (3, 9, 7, 32, 64, 2),
    (2, 8, 8, 64, 128, 2),
    (3, 20, 56, 64, 64, 1),
    (5, 6, 6, 48, 64, 1),
    (3, 7, 7, 128, 128, 1),
    (2, 6, 6, 256, 512, 2),
    (80, 14, 14, 128, 128, 1),
]


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=lambda case: "x".join(map(str, case)))
def test_equals_float64_rounded_once(case):
    *shape, features, stride = case
    x, d_y = operands(*shape, features, stride)
    result, targets = weight_gradient(x, d_y, stride, features)
    assert targets == {native.BF16_WEIGHTS_TARGET}
    assert_rounded_float64(result, x, d_y, stride)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_any_team_size_gives_the_same_sums(threads):
    x, d_y = operands(5, 12, 12, 64, 64, 1)
    call = jax.ffi.ffi_call(
        native.BF16_WEIGHTS_TARGET, jax.ShapeDtypeStruct((3, 3, 64, 64), jnp.bfloat16)
    )
    result = call(x, d_y, stride=np.int64(1), num_threads=np.int64(threads))
    assert_rounded_float64(result, x, d_y, 1)


@needs_kernel
def test_mismatched_shapes_are_an_error_not_a_crash():
    x, d_y = operands(2, 8, 8, 16, 32, 1)
    call = jax.ffi.ffi_call(
        native.BF16_WEIGHTS_TARGET, jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.bfloat16)
    )
    with pytest.raises(Exception, match="expects NHWC x and d_y"):
        call(x, d_y, stride=np.int64(2), num_threads=np.int64(2))  # d_y is stride 1's


# Each runs on oneDNN's kernel instead: 16 output channels (where it lost), "SAME" padding at
# stride 2 (0 above, 1 below), stride 3, a dilated or grouped kernel, 8 channels, 1x1, float32.
OTHERS = [
    dict(features=16),
    dict(padding=((0, 1), (0, 1)), stride=2),
    dict(stride=3),
    dict(rhs_dilation=(2, 2)),
    dict(groups=2),
    dict(channels=8),
    dict(kernel=(1, 1)),
    dict(dtype=jnp.float32),
]


@pytest.mark.parametrize("other", OTHERS, ids=lambda o: "-".join(map(str, o)))
def test_which_convolutions_run_it(other):
    channels, features = other.get("channels", 32), other.get("features", 64)
    groups = other.get("groups", 1)
    rhs = (*other.get("kernel", (3, 3)), channels // groups, features)
    stride = other.get("stride", 1)
    geometry = conv.Geometry(
        (2, 9, 9, channels),
        rhs,
        jnp.dtype(other.get("dtype", jnp.bfloat16)),
        (stride, stride),
        other.get("padding", PADDING),
        other.get("rhs_dilation", (1, 1)),
        groups,
    )
    assert weight_gradient_kernel(geometry) is not conv.BF16_WEIGHTS
    default = conv.Geometry((2, 9, 9, 32), (3, 3, 32, 64), jnp.dtype(jnp.bfloat16), padding=PADDING)
    ours = weight_gradient_kernel(default) is conv.BF16_WEIGHTS
    assert ours == native.bf16_weights_available()


def weight_gradient_kernel(geometry):
    plan = conv.planned(geometry)
    return None if plan is None else plan.kernels[native.BACKWARD_WEIGHTS]


@needs_kernel
def test_where_onednn_has_another_kernel_it_keeps_it(monkeypatch):
    # Measured faster than oneDNN's AVX512-BF16 kernel only, not AMX's.
    real = native.implementation

    def amx(op, kind, config):
        found, name = real(op, kind, config)
        return (
            (found, "brg_conv_bwd_w:avx512_core_amx")
            if kind == native.BACKWARD_WEIGHTS
            else (
                found,
                name,
            )
        )

    def plan():
        conv.clear_plans()
        geometry = conv.Geometry(
            (2, 9, 9, 32), (3, 3, 32, 64), jnp.dtype(jnp.bfloat16), padding=PADDING
        )
        return weight_gradient_kernel(geometry)

    assert plan() is conv.BF16_WEIGHTS
    monkeypatch.setattr(native, "implementation", amx)
    assert plan() is not conv.BF16_WEIGHTS
    monkeypatch.undo()
    conv.clear_plans()

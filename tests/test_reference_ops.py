"""The lecture's worked examples, reproduced by `zoo.reference_ops`, and the references checked
against the fast path (`jax.lax.conv_general_dilated`, `flax.linen.Conv`, Flax pooling)."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import formulas
from zoo.reference_ops import avg_pool2d, conv2d, cross_correlate2d, max_pool2d, sobel_edges

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}  # float32 sums of at most 75 normal products.


def bar_image() -> np.ndarray:
    """The lecture's 10x10 image: zeros with a vertical bar of ones in columns 3..6."""
    image = np.zeros((10, 10), np.float32)
    image[:, 3:7] = 1.0
    return image


# [[-1, 0, 1]] in three rows: responds to dark-to-bright changes from left to right.
VERTICAL_EDGE_KERNEL = np.array([[-1, 0, 1]] * 3, np.float32)


# --- The lecture's worked examples ---------------------------------------------------------------


def test_vertical_edge_detector_without_padding():
    # Output column j sees input columns j..j+2 and scores 3 * (x[:, j+2] - x[:, j]): +3 while
    # the window's right column is in the bar and its left is not (j = 1, 2), -3 as it leaves.
    z = cross_correlate2d(bar_image(), VERTICAL_EDGE_KERNEL)
    expected_row = [0, 3, 3, 0, 0, -3, -3, 0]
    np.testing.assert_array_equal(z, np.tile(expected_row, (8, 1)))


def test_vertical_edge_detector_with_zero_padding_one_keeps_the_size():
    # In the first and last rows one kernel row falls on the zero padding, so 3 becomes 2.
    z = cross_correlate2d(bar_image(), VERTICAL_EDGE_KERNEL, padding=1)
    edge_row = [0, 0, 2, 2, 0, 0, -2, -2, 0, 0]
    inner_row = [0, 0, 3, 3, 0, 0, -3, -3, 0, 0]
    np.testing.assert_array_equal(z, np.array([edge_row] + [inner_row] * 8 + [edge_row]))


def test_correlation_does_not_flip_the_kernel():
    # A single 1 at (2, 2) picks out x[i + u, j + v] = 1 at u = 2 - i, v = 2 - j: the output is
    # the kernel rotated by 180 degrees. True convolution (flipped kernel) would return w itself.
    impulse = np.zeros((5, 5), np.float32)
    impulse[2, 2] = 1.0
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_array_equal(cross_correlate2d(impulse, w, padding=0), w[::-1, ::-1])


def test_stride_two_with_a_quarter_kernel_is_average_pooling():
    image = normal(5, (8, 6))
    quarter = jnp.full((2, 2), 0.25)
    strided = cross_correlate2d(image, quarter, stride=2)
    assert strided.shape == (4, 3)
    chex.assert_trees_all_close(strided, avg_pool2d(image, 2, stride=2), **TOLERANCE)
    # The same mean written out for the first window, so the two cannot agree by sharing a bug.
    np.testing.assert_allclose(strided[0, 0], np.mean(image[:2, :2]), **TOLERANCE)


def test_stride_two_quarter_kernel_per_channel_is_average_pooling_of_a_batch():
    # conv2d sums over input channels, so a diagonal kernel (channel c -> c only) pools each one.
    images = normal(6, (2, 6, 6, 3))
    per_channel_quarter = 0.25 * jnp.broadcast_to(jnp.eye(3), (2, 2, 3, 3))
    chex.assert_trees_all_close(
        conv2d(images, per_channel_quarter, stride=2), avg_pool2d(images, 2), **TOLERANCE
    )


def test_max_pooling_two_by_two_stride_two():
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]])
    np.testing.assert_array_equal(max_pool2d(x, 2, stride=2), [[6, 8], [3, 4]])
    np.testing.assert_array_equal(max_pool2d(x, 2), [[6, 8], [3, 4]])  # stride defaults to K.
    assert max_pool2d(x, 2).dtype == jnp.int32  # A max picks an input value: no float cast.


def test_sobel_on_the_bar_image():
    # Column profile c = [0 0 0 1 1 1 1 0 0 0]. Inside the image every row is the same, so
    # gx[i, j] = (1 + 2 + 1) * (c[j+1] - c[j-1]) = 4 * [0 0 1 1 0 0 -1 -1 0 0];
    # in rows 0 and 9 one kernel row lies on the zero padding, leaving (2 + 1) = 3 of the 4.
    gx, gy, magnitude = sobel_edges(bar_image())
    gx_row = np.array([0, 0, 1, 1, 0, 0, -1, -1, 0, 0], np.float32)
    np.testing.assert_array_equal(gx, np.array([3 * gx_row] + [4 * gx_row] * 8 + [3 * gx_row]))

    # gy = (row below) - (row above) smoothed by [1 2 1]: zero inside the bar's rows; in row 0 the
    # row above is padding, so gy = c[j-1] + 2 c[j] + c[j+1] = [0 0 1 3 4 4 3 1 0 0], negated in
    # row 9.
    smoothed_profile = np.array([0, 0, 1, 3, 4, 4, 3, 1, 0, 0], np.float32)
    expected_gy = np.zeros((10, 10), np.float32)
    expected_gy[0], expected_gy[-1] = smoothed_profile, -smoothed_profile
    np.testing.assert_array_equal(gy, expected_gy)

    # Magnitude: |gx| inside; in row 0, e.g. column 2: sqrt(3^2 + 1^2), column 3: sqrt(3^2 + 3^2).
    np.testing.assert_allclose(magnitude, np.sqrt(np.square(gx) + np.square(gy)), **TOLERANCE)
    np.testing.assert_allclose(magnitude[0, 2:5], [np.sqrt(10), np.sqrt(18), 4], **TOLERANCE)
    np.testing.assert_array_equal(magnitude[5], 4 * np.abs(gx_row))


# --- The lecture's formulas ----------------------------------------------------------------------


def test_lenet5_s2_to_c3_weights_with_full_connectivity():
    assert formulas.conv_params(6, 16, 5, bias=False) == 16 * 6 * 5 * 5 == 2_400
    assert formulas.conv_params(6, 16, 5) == 2_400 + 16


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "expected"),
    [
        (224, 11, 4, 2, 55),  # AlexNet conv1: floor((224 - 11 + 4) / 4) + 1.
        (32, 5, 1, 0, 28),  # LeNet-5 C1.
        (28, 2, 2, 0, 14),  # LeNet-5 S2 (pooling uses the same formula).
        (10, 3, 1, 0, 8),  # The bar image, no padding.
        (10, 3, 1, 1, 10),  # The bar image, "same" padding.
        (7, 3, 2, 0, 3),  # The floor: (7 - 3) / 2 + 1.
        (8, 3, 2, 0, 3),  # floor(5 / 2) + 1: the last column never starts a window.
    ],
)
def test_conv_output_size(size, kernel, stride, padding, expected):
    assert formulas.conv_output_size(size, kernel, stride, padding) == expected
    assert formulas.pool_output_size(size, kernel, stride, padding) == expected


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding"),
    [(5, 3, 0, 0), (5, 0, 1, 0), (0, 1, 1, 0), (5, 3, 1, -1), (3, 5, 1, 0), (5, 3, 1.5, 0)],
)
def test_conv_output_size_rejects_invalid_inputs(size, kernel, stride, padding):
    with pytest.raises(ValueError):
        formulas.conv_output_size(size, kernel, stride, padding)


def test_conv_params_rejects_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="groups=4"):
        formulas.conv_params(6, 16, 5, groups=4)


# --- Against the fast path -----------------------------------------------------------------------


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 values; NumPy's generator spares a JAX compile per shape."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CONV_CASES = [  # (batch, height, width, in_channels, out_channels, kernel, stride, padding)
    (2, 9, 11, 3, 4, kernel, stride, padding)  # Odd, unequal sides exercise the floor.
    for kernel in (1, 3, 5)
    for stride in (1, 2)
    for padding in (0, 1, 2)
] + [
    (1, 6, 6, 1, 1, 3, 1, 1),  # The lecture's case: one image, one channel, one kernel.
    (3, 8, 5, 5, 1, 3, 2, 0),  # Many input channels summed into one map.
    (1, 5, 7, 1, 6, 2, 1, 1),  # One input channel fanned out; an even kernel.
]


@pytest.mark.parametrize(
    ("batch", "height", "width", "in_channels", "out_channels", "kernel", "stride", "padding"),
    CONV_CASES,
)
def test_conv2d_matches_lax_and_flax(
    batch, height, width, in_channels, out_channels, kernel, stride, padding
):
    x = normal(0, (batch, height, width, in_channels))
    w = normal(1, (kernel, kernel, in_channels, out_channels))
    b = normal(2, (out_channels,))
    reference = conv2d(x, w, b, stride=stride, padding=padding)

    out_height, out_width = (
        formulas.conv_output_size(side, kernel, stride, padding) for side in (height, width)
    )
    assert reference.shape == (batch, out_height, out_width, out_channels)

    symmetric = ((padding, padding), (padding, padding))
    lax_out = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=symmetric,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    chex.assert_trees_all_close(reference, lax_out + b, **TOLERANCE)

    layer = nn.Conv(
        out_channels,
        (kernel, kernel),
        strides=stride,
        padding=symmetric,
        precision=jax.lax.Precision.HIGHEST,
    )
    flax_out = layer.apply({"params": {"kernel": w, "bias": b}}, x)
    chex.assert_trees_all_close(reference, flax_out, **TOLERANCE)


def test_cross_correlate2d_is_conv2d_with_one_image_and_one_channel():
    image, kernel = normal(3, (7, 9)), normal(4, (2, 3))
    expected = conv2d(image[None, :, :, None], kernel[:, :, None, None], stride=2, padding=1)
    chex.assert_trees_all_close(
        cross_correlate2d(image, kernel, stride=2, padding=1), expected[0, :, :, 0], **TOLERANCE
    )


def test_conv2d_works_under_jit():
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 1))
    jitted = jax.jit(functools.partial(conv2d, stride=2, padding=1))
    # Centre output (1, 1) sees a full 3x3x2 window of ones; the corner (0, 0) sees 2x2x2.
    np.testing.assert_array_equal(jitted(x, w)[0, :, :, 0], [[8, 12, 8], [12, 18, 12], [8, 12, 8]])


POOL_CASES = pytest.mark.parametrize(
    ("window", "stride", "padding"),
    [(2, None, 0), (2, 1, 0), (3, 2, 0), (3, 1, 1), (2, 2, 1), (3, 3, 1)],
)


@POOL_CASES
def test_max_pool2d_matches_flax(window, stride, padding):
    x = normal(window * 10 + padding, (2, 7, 8, 3))
    expected = nn.max_pool(
        x,
        (window, window),
        strides=(stride or window,) * 2,
        padding=((padding, padding), (padding, padding)),
    )
    chex.assert_trees_all_close(max_pool2d(x, window, stride, padding), expected, **TOLERANCE)


@POOL_CASES
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_flax(window, stride, padding, count_include_pad):
    x = normal(window * 10 + padding, (2, 7, 8, 3))
    expected = nn.avg_pool(
        x,
        (window, window),
        strides=(stride or window,) * 2,
        padding=((padding, padding), (padding, padding)),
        count_include_pad=count_include_pad,
    )
    result = avg_pool2d(x, window, stride, padding, count_include_pad=count_include_pad)
    chex.assert_trees_all_close(result, expected, **TOLERANCE)


def test_avg_pool_padding_counts_differ_at_the_corner():
    # A 2x2 window at stride 2 with padding 1 covers one real cell at the top-left corner.
    x = jnp.full((4, 4), 8.0)
    assert avg_pool2d(x, 2, padding=1)[0, 0] == 2.0  # 8 / 4 cells, three of them padding.
    assert avg_pool2d(x, 2, padding=1, count_include_pad=False)[0, 0] == 8.0  # 8 / 1 real cell.


def test_max_pool_padding_never_wins():
    x = -jnp.ones((1, 3, 3, 1))  # All negative: zero padding would wrongly return 0.
    np.testing.assert_array_equal(max_pool2d(x, 2, stride=2, padding=1), -jnp.ones((1, 2, 2, 1)))
    ints = -np.ones((3, 3), np.int32)
    np.testing.assert_array_equal(max_pool2d(ints, 2, stride=2, padding=1), -np.ones((2, 2)))


# --- Input validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: cross_correlate2d(np.zeros((2, 3, 3)), np.zeros((3, 3))),
            r"x must have shape \(H, W\), got shape \(2, 3, 3\)",
        ),
        (
            lambda: cross_correlate2d(np.zeros((3, 3)), np.zeros(3)),
            r"w must have shape \(KH, KW\), got shape \(3,\)",
        ),
        (
            lambda: cross_correlate2d(np.zeros((3, 3)), np.zeros((5, 5))),
            "kernel 5x5 is larger than the padded input: 3x3 padded by 0 on each side is 3x3",
        ),
        (
            lambda: cross_correlate2d(np.zeros((3, 3)), np.zeros((3, 3)), stride=0),
            "stride must be a positive integer, got 0",
        ),
        (
            lambda: cross_correlate2d(np.zeros((3, 3)), np.zeros((3, 3)), padding=-1),
            "padding must be a non-negative integer, got -1",
        ),
        (
            lambda: conv2d(np.zeros((3, 3, 2)), np.zeros((3, 3, 2, 4))),
            r"x_nhwc must have shape \(N, H, W, C_in\), got shape \(3, 3, 2\)",
        ),
        (
            lambda: conv2d(np.zeros((1, 3, 3, 2)), np.zeros((3, 3, 1, 4))),
            r"C_in=1 input channels but x_nhwc of shape \(1, 3, 3, 2\) has 2",
        ),
        (
            lambda: conv2d(np.zeros((1, 3, 3, 2)), np.zeros((3, 3, 2, 4)), np.zeros(3)),
            r"bias must have shape \(4,\) to match C_out .* got \(3,\)",
        ),
        (
            lambda: max_pool2d(np.zeros((4, 4, 1)), 2),
            r"\(H, W\) image or an \(N, H, W, C\) batch, got shape \(4, 4, 1\)",
        ),
        (
            lambda: avg_pool2d(np.zeros((1, 3, 3, 1)), 4),
            "window 4x4 is larger than the padded input: 3x3 padded by 0 on each side is 3x3",
        ),
        (
            lambda: max_pool2d(np.zeros((4, 4)), 0),
            r"window sides must be positive integers, got \(0, 0\)",
        ),
        (
            lambda: avg_pool2d(np.zeros((4, 4)), 2, stride=-1),
            "stride must be a positive integer, got -1",
        ),
        (
            lambda: sobel_edges(np.zeros((1, 4, 4, 1))),
            r"image must have shape \(H, W\), got shape \(1, 4, 4, 1\)",
        ),
    ],
)
def test_invalid_inputs_raise_value_errors_that_name_the_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()

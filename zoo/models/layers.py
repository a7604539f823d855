"""Small building blocks shared by the model families.

Pooling is a module here (not a bare function call) so that it has a stable name in the module
tree: `capture_intermediates` then records its output, which is how the tests check the analytic
shapes and how feature extraction finds a stage by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo import analytic, formulas
from zoo.analytic import Counts, Shape
from zoo.errors import InvalidValueError
from zoo.ops import (
    Conv,
    batch_norm_inference,
    batch_norm_training,
    initializers,
    max_pool,
    spatial_mean,
)

Dtype = Any


def check_positive(model: str, **values: Any) -> None:
    """Raises `ValueError` naming the first config value that is not a positive integer.

    A list or tuple value must be non-empty with every entry a positive integer.
    """
    for name, value in values.items():
        items = tuple(value) if isinstance(value, list | tuple) else (value,)
        if not items or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
        ):
            raise InvalidValueError(f"{model}: {name} must be positive integer(s), got {value!r}")


def check_rate(model: str, name: str, value: Any) -> None:
    """Raises `ValueError` unless `value` is a probability of dropping: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidValueError(f"{model}: {name} must be a number in [0, 1), got {value!r}")


def check_choice(model: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise InvalidValueError(
            f"{model}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def fits_input(shape: tuple[int, ...], expected: tuple[int, int, int], *, fixed_size: bool) -> bool:
    """Whether one (H, W, C) image of `shape` is a valid input for a model designed for `expected`.

    A model that is not `fixed_size` accepts any height and width, but still needs the channels.
    """
    return (
        len(shape) == 3
        and shape[-1] == expected[-1]
        and (not fixed_size or tuple(shape) == tuple(expected))
    )


def check_input(
    model: str, x: jax.Array, expected: tuple[int, int, int], *, fixed_size: bool
) -> None:
    """Raises `ValueError` before tracing goes any further when `x` cannot be this model's input.

    `expected` is (height, width, channels), as for `fits_input`.
    """
    if x.ndim != 4 or not fits_input(x.shape[1:], expected, fixed_size=fixed_size):
        h, w, c = expected
        want = f"(batch, {h}, {w}, {c})" if fixed_size else f"(batch, height, width, {c})"
        raise InvalidValueError(f"{model} expects NHWC images of shape {want}, got shape {x.shape}")


def explicit_padding(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding like PyTorch's `padding=p` (Flax's 'SAME' is asymmetric at stride 2)."""
    return ((padding, padding), (padding, padding))


class MaxPool(nn.Module):
    """Max pooling over a `window` x `window` patch; padding counts as -inf.

    Values and gradients are those of `nn.max_pool` (for bf16, of `nn.max_pool` in float32):
    `zoo.ops.max_pool`. With `ceil_mode`, PyTorch's `MaxPool2d(ceil_mode=True)`: the output
    size rounds up (`formulas.pool_output_size`), the last window reaching past the input's
    bottom and right edges over -inf.
    """

    window: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return analytic.pool(
            input_shape, self.window, self.stride, self.padding, ceil_mode=self.ceil_mode
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.ceil_mode:
            out_h, out_w, _ = self.describe(x.shape[1:]).output_shape
            # What the windows reach beyond the symmetric padding: bottom rows, right columns.
            extra = [
                max(0, (out - 1) * self.stride + self.window - (size + 2 * self.padding))
                for out, size in ((out_h, x.shape[1]), (out_w, x.shape[2]))
            ]
            if any(extra):
                pad = ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0))
                x = jnp.pad(x, pad, constant_values=-jnp.inf)
        return max_pool(x, self.window, self.stride, self.padding)


class AdaptiveAvgPool(nn.Module):
    """PyTorch's `AdaptiveAvgPool2d(output_size)`: bin i of each axis averages the inputs
    `formulas.adaptive_pool_window` gives it, floor(i H / n) to ceil((i + 1) H / n), so any
    input size gives `output_size` (bins overlap, or repeat an input smaller than n). Summed in
    float32 for narrower floats."""

    output_size: tuple[int, int]

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return analytic.adaptive_pool(input_shape, self.output_size)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if tuple(x.shape[1:3]) == tuple(self.output_size):
            return x  # One input per bin: the identity (VGG's and AlexNet's at 224x224).
        rows = _adaptive_bins(x.shape[1], self.output_size[0])
        cols = _adaptive_bins(x.shape[2], self.output_size[1])
        wide = jnp.promote_types(x.dtype, jnp.float32)
        pooled = jnp.einsum(
            "ih,jw,nhwc->nijc",
            rows.astype(x.dtype),
            cols.astype(x.dtype),
            x,
            preferred_element_type=wide,
        )
        return pooled.astype(x.dtype)


def _adaptive_bins(size: int, bins: int) -> np.ndarray:
    """(bins, size) averaging matrix of adaptive pooling along one axis."""
    matrix = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, end = formulas.adaptive_pool_window(size, bins, i)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def window_sum(
    x: jax.Array,
    window: Sequence[int],
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """`lax.reduce_window` sum of `x`, accumulated and returned in float32 for narrower floats,
    as PyTorch accumulates bf16 pooling; callers round the result once. A bf16 sum would round
    each partial sum, and XLA:CPU runs it slowly (bench/README.md, "Banded matmul").
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return lax.reduce_window(x.astype(acc), np.zeros((), acc), lax.add, window, strides, padding)


class AvgPool(nn.Module):
    """Average pooling over a `window` x `window` patch (no padding), summed in float32."""

    window: int
    stride: int

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return analytic.pool(input_shape, self.window, self.stride, kind="avgpool")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.window, self.stride
        return (window_sum(x, (1, k, k, 1), (1, s, s, 1)) / (k * k)).astype(x.dtype)


class GlobalAvgPool(nn.Module):
    """Mean over height and width: (N, H, W, C) -> (N, C), summed in float32 (`spatial_mean`)."""

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return Counts("global_avgpool", (analytic.spatial(input_shape, "global_avgpool")[-1],))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return spatial_mean(x)


class Flatten(nn.Module):
    """(N, ...) -> (N, prod(...)), in NHWC order (PyTorch flattens CHW: see the importer)."""

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return Counts("flatten", (math.prod(input_shape),))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class Reshape(nn.Module):
    """(N, ...) -> (N, *shape)."""

    shape: tuple[int, ...]

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        if math.prod(input_shape) != math.prod(self.shape):
            raise InvalidValueError(f"reshape: cannot reshape {input_shape} to {self.shape}")
        return Counts("reshape", tuple(self.shape))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], *self.shape)


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` for channels-last inputs (Ioffe & Szegedy 2015), statistics included.

    Train mode normalises with the batch's biased variance and moves the running variance
    towards the unbiased one, var * n / (n - 1) with n = N * H * W per channel, exactly as
    PyTorch does (Flax's `nn.BatchNorm` keeps the biased one, which drifts from imported
    torchvision statistics on small maps). The variables are `nn.BatchNorm`'s: params `scale`
    and `bias`, batch_stats `mean` and `var` (float32), so checkpoints load either way.

    Attributes:
      use_running_average: normalise with the running statistics (eval) instead of the batch's.
      momentum: the running statistics keep this share of their old value (PyTorch's momentum
        is 1 - this: 0.9 here is its 0.1).
      epsilon: added to the variance, PyTorch's eps.
      relu: return the normalised result's ReLU (`nn.relu`, gradient included), fused into the
        batch norm's kernels where oneDNN runs them: a BatchNorm2d followed by a ReLU.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    relu: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return analytic.batchnorm(input_shape)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = (x.shape[-1],)
        scale = self.param("scale", self.scale_init, channels, self.param_dtype)
        bias = self.param("bias", self.bias_init, channels, self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
        # The arithmetic is float32; a float32 result of a bf16 input must not pass through bf16.
        x = x.astype(jnp.promote_types(x.dtype, self.dtype))
        if self.use_running_average:
            y = batch_norm_inference(
                x, running_mean.value, running_var.value, scale, bias, self.epsilon, relu=self.relu
            )
        else:
            y, mean, var = batch_norm_training(x, scale, bias, self.epsilon, relu=self.relu)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                keep = self.momentum
                running_mean.value = keep * running_mean.value + (1 - keep) * mean
                running_var.value = keep * running_var.value + (1 - keep) * unbiased
        return y.astype(self.dtype)


def batch_norm(
    train: bool,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
    scale_init: Any = None,
    *,
    relu: bool = False,
    epsilon: float = 1e-5,
) -> BatchNorm:
    """The zoo's BatchNorm with PyTorch's constants (momentum 0.1 there is 0.9 here, eps 1e-5
    unless `epsilon` says otherwise), followed by a ReLU where `relu`."""
    return BatchNorm(
        use_running_average=not train,
        epsilon=epsilon,
        relu=relu,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=scale_init or nn.initializers.ones,
        name=name,
    )


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"): each
    example's residual branch is dropped with probability `rate`, and kept ones are scaled by
    1 / (1 - rate) so the expectation is the eval-mode branch (timm's `drop_path`)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def drop_path_rates(blocks: int, rate: float) -> tuple[float, ...]:
    """timm's schedule: block i of `blocks` drops with rate * i / (blocks - 1), 0 to `rate`."""
    return tuple(rate * i / max(blocks - 1, 1) for i in range(blocks))


# --- The mobile networks' layers (MobileNet V2/V3, EfficientNet) ---------------------------------

# The activations of the mobile networks by name (a module field stays a plain, hashable
# string): PyTorch's ReLU, ReLU6, Hardswish, Hardsigmoid, SiLU and Sigmoid, value for value.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": jax.nn.relu6,  # min(max(x, 0), 6): Sandler et al. 2018
    "hard_swish": jax.nn.hard_swish,  # x * relu6(x + 3) / 6: Howard et al. 2019, Sec. 5.2
    "hard_sigmoid": jax.nn.hard_sigmoid,  # relu6(x + 3) / 6
    "silu": jax.nn.silu,  # x * sigmoid(x), "swish": Ramachandran et al. 2017
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` (a key of `ACTIVATIONS`); None is the identity."""
    return (lambda x: x) if name is None else ACTIVATIONS[name]


def check_multiplier(model: str, name: str, value: Any) -> None:
    """Raises `ValueError` unless `value` is a positive number (a width or depth multiplier)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValueError(f"{model}: {name} must be a positive number, got {value!r}")


he_normal_fan_out = initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNormAct(nn.Module):
    """torchvision's `Conv2dNormActivation`: a bias-free KxK convolution padded by (K - 1) // 2
    on each side (symmetric, as PyTorch pads, not TensorFlow's 'SAME'), batch norm, then an
    activation (None: none). `groups` = the input's channels makes it depthwise.

    Its submodules are `conv` and `bn`; its own row in the analytic table is its output, after
    the activation (kind: the activation's name, or "linear"), so a feature stage may name it.
    Kernels are He normal (fan out), as torchvision initialises them.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    activation: str | None = None
    norm_epsilon: float = 1e-5
    norm_momentum: float = 0.9  # Flax's convention: PyTorch's momentum 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        h, w, _ = analytic.spatial(input_shape, "conv_norm_act")
        pad = (self.kernel_size - 1) // 2
        size = [formulas.conv_output_size(n, self.kernel_size, self.stride, pad) for n in (h, w)]
        return Counts(self.activation or "linear", (*size, self.features))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            self.stride,
            explicit_padding((self.kernel_size - 1) // 2),
            feature_group_count=self.groups,
            use_bias=False,
            kernel_init=he_normal_fan_out,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        fused_relu = self.activation == "relu"  # the batch norm's kernels apply it themselves
        x = BatchNorm(
            use_running_average=not train,
            momentum=self.norm_momentum,
            epsilon=self.norm_epsilon,
            relu=fused_relu,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return x if fused_relu else activation(self.activation)(x)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, Fig. 2) as torchvision's `SqueezeExcitation`:
    x * scale_activation(fc2(activation(fc1(mean over H, W of x)))), with `fc1` (C -> S) and
    `fc2` (S -> C) 1x1 convolutions with biases, so torchvision's weights map one to one.

    Described as one layer (`zoo.formulas.squeeze_excitation_params` / `_macs`): its output has
    its input's shape. The mean is `GlobalAvgPool`'s, so a NaN in the map reaches the scale.
    """

    squeeze_channels: int
    activation: str = "relu"
    scale_activation: str = "sigmoid"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        channels = analytic.spatial(input_shape, "squeeze_excitation")[-1]
        return Counts(
            "squeeze_excitation",
            tuple(input_shape),
            formulas.squeeze_excitation_params(channels, self.squeeze_channels),
            formulas.squeeze_excitation_macs(channels, self.squeeze_channels),
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        scale = GlobalAvgPool(name="pool")(x)[:, None, None, :]
        scale = Conv(self.squeeze_channels, (1, 1), name="fc1", **dtypes)(scale)
        scale = Conv(channels, (1, 1), name="fc2", **dtypes)(activation(self.activation)(scale))
        return x * activation(self.scale_activation)(scale).astype(x.dtype)


def stochastic_depth_rates(blocks: int, rate: float) -> tuple[float, ...]:
    """torchvision's EfficientNet schedule: block i of `blocks` drops with rate * i / blocks,
    from 0 to rate * (blocks - 1) / blocks (timm's `drop_path_rates` reaches `rate`)."""
    return tuple(rate * i / blocks for i in range(blocks))

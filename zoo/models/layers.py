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
from flax.linen.dtypes import promote_dtype
from jax import lax

from zoo import analytic, formulas
from zoo.analytic import Counts, Shape
from zoo.errors import InvalidValueError
from zoo.ops import (
    Conv,
    batch_norm_inference,
    batch_norm_training,
    dot_product_attention,
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
    return drop_path_by(x, rate, jax.random.uniform(rng, (x.shape[0],)))


def drop_path_by(x: jax.Array, rate: float, noise: jax.Array) -> jax.Array:
    """`drop_path` with its randomness given: example i's branch is kept where `noise[i]`, a
    uniform draw in [0, 1), is below 1 - rate (`jax.random.bernoulli`'s own test)."""
    keep = 1.0 - rate
    mask = (noise < keep).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def drop_path_noise(rng: jax.Array, branches: int, batch: int) -> jax.Array:
    """(branches, batch) uniform draws: the randomness of every residual branch's drop path in a
    network, drawn at once for `drop_path_by`. Each `jax.random` draw is a threefry computation
    that XLA compiles on its own: one per block (and Flax's key derivation per module, another)
    made most of a deep network's train-step compile time (bench/README.md)."""
    return jax.random.uniform(rng, (branches, batch))


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


# --- ConvNeXt and the Vision Transformer: GELU, layer normalisation, layer scale, and the
# tokens, position embeddings and self-attention of a transformer encoder. A sequence is
# (N, L tokens, D features); layer normalisation and layer scale act on the last axis, the
# channels of an NHWC map or the features of a token.


def gelu(x: jax.Array) -> jax.Array:
    """GELU (Hendrycks & Gimpel 2016) in its exact erf form, PyTorch's `nn.GELU()` default
    (`jax.nn.gelu` defaults to the tanh approximation, ~1e-3 away)."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(dtype: Dtype, param_dtype: Dtype, name: str, epsilon: float = 1e-6) -> nn.LayerNorm:
    """`nn.LayerNorm` over the last axis (Ba et al. 2016): torchvision's `LayerNorm2d` on an NHWC
    map, its `nn.LayerNorm` on tokens; eps 1e-6 as ConvNeXt and ViT set it (PyTorch's default
    is 1e-5). Statistics in float32 (two passes), scale and bias as `weight` and `bias`."""
    return nn.LayerNorm(
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class LayerScale(nn.Module):
    """x times a learned factor per channel (Touvron et al. 2021, "Going deeper with Image
    Transformers"): ConvNeXt's `layer_scale`, initialised to `init_value` (1e-6 there), so each
    residual branch starts near zero."""

    init_value: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        params = formulas.layer_scale_params(input_shape[-1])
        return Counts("layer_scale", tuple(input_shape), params)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.constant(self.init_value)
        gamma = self.param("gamma", init, (x.shape[-1],), self.param_dtype)
        return x.astype(self.dtype) * gamma.astype(self.dtype)


class ClassToken(nn.Module):
    """Prepends one learned token to every sequence, (L, D) -> (L + 1, D): the x_class of
    Dosovitskiy et al. 2020, Eq. 1, whose final state is the image's representation. Zeros at
    initialisation, as torchvision's."""

    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        length, dim = analytic.sequence(input_shape, "class_token")
        return Counts("class_token", (length + 1, dim), formulas.class_token_params(dim))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, _, dim = x.shape
        token = self.param("token", nn.initializers.zeros, (1, 1, dim), self.param_dtype)
        tokens = jnp.broadcast_to(token.astype(x.dtype), (batch, 1, dim))
        return jnp.concatenate([tokens, x], axis=1)


def resample_position_embedding(
    embedding: jax.Array,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    prefix_tokens: int = 1,
) -> jax.Array:
    """Position embeddings (1, prefix + h * w, D) of an h x w patch grid, for another grid:
    timm's `resample_abs_pos_embed` with its defaults. The prefix (class token) embeddings are
    kept; the patch embeddings, as an h x w x D map, are resized bicubically in float32 as
    PyTorch's `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` resizes them,
    which is `jax.image.resize(method="cubic", antialias=True)`: Keys' cubic with a = -0.5,
    widened by the scale when shrinking, its weights renormalised at the borders (PIL's filter;
    PyTorch's bicubic without antialias uses a = -0.75 instead)."""
    if tuple(old_grid) == tuple(new_grid):
        return embedding
    dim = embedding.shape[-1]
    prefix, patches = embedding[:, :prefix_tokens], embedding[:, prefix_tokens:]
    patches = patches.astype(jnp.float32).reshape(1, *old_grid, dim)
    resized = jax.image.resize(patches, (1, *new_grid, dim), method="cubic", antialias=True)
    resized = resized.reshape(1, -1, dim).astype(embedding.dtype)
    return jnp.concatenate([prefix, resized], axis=1)


class PositionEmbedding(nn.Module):
    """Adds learned absolute position embeddings to [prefix tokens; patch tokens] (E_pos of
    Dosovitskiy et al. 2020, Eq. 1): one per prefix token and per patch of a `grid` of patches
    (the model's design size). A sequence from another grid, passed as `grid=` in the call,
    gets them resampled bicubically (`resample_position_embedding`), as timm's ViTs do with
    `dynamic_img_size=True`. Normal with std 0.02 at initialisation, as torchvision's."""

    grid: tuple[int, int]
    prefix_tokens: int = 1
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        length, dim = analytic.sequence(input_shape, "position_embedding")
        tokens = self.prefix_tokens + math.prod(self.grid)
        return Counts(
            "position_embedding", (length, dim), formulas.position_embedding_params(tokens, dim)
        )

    @nn.compact
    def __call__(self, x: jax.Array, grid: tuple[int, int] | None = None) -> jax.Array:
        tokens = self.prefix_tokens + math.prod(self.grid)
        shape = (1, tokens, x.shape[-1])
        embedding = self.param("embedding", initializers.normal(0.02), shape, self.param_dtype)
        grid = self.grid if grid is None else tuple(grid)
        embedding = resample_position_embedding(embedding, self.grid, grid, self.prefix_tokens)
        return x + embedding.astype(x.dtype)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, Sec. 3.2) as `torch.nn.MultiheadAttention`
    computes it: one packed projection of each token to its query, key and value ([q | k | v],
    each `num_heads` heads of D / num_heads features), softmax(q k^T / sqrt(D / heads)) v per
    head (`zoo.ops.dot_product_attention`: cuDNN's fused kernel on GPUs), the heads
    concatenated and projected back to D. Parameters 4 D^2 + 4 D, torch's `in_proj_weight`,
    `in_proj_bias` and `out_proj` (`formulas.attention_params`); MACs the projections' 4 L D^2
    and the two attention matmuls' 2 L^2 D (`formulas.attention_macs`). Initialised as torch
    does: Xavier-uniform packed projection, PyTorch's `Linear` default for the output, zero
    biases."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _head_size(self, dim: int) -> int:
        if dim % self.num_heads:
            raise InvalidValueError(
                f"attention: {dim} features do not split into {self.num_heads} heads"
            )
        return dim // self.num_heads

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        length, dim = analytic.sequence(input_shape, "attention")
        self._head_size(dim)
        return Counts(
            "attention",
            (length, dim),
            formulas.attention_params(dim),
            formulas.attention_macs(length, dim),
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, dim = x.shape
        heads, size = self.num_heads, self._head_size(dim)
        xavier = initializers.variance_scaling(1.0, "fan_avg", "uniform")
        torch_linear = initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        zeros = nn.initializers.zeros
        qkv_kernel = self.param("qkv_kernel", xavier, (dim, 3 * dim), self.param_dtype)
        qkv_bias = self.param("qkv_bias", zeros, (3 * dim,), self.param_dtype)
        out_kernel = self.param("out_kernel", torch_linear, (dim, dim), self.param_dtype)
        out_bias = self.param("out_bias", zeros, (dim,), self.param_dtype)
        x, qkv_kernel, qkv_bias, out_kernel, out_bias = promote_dtype(
            x, qkv_kernel, qkv_bias, out_kernel, out_bias, dtype=self.dtype
        )
        qkv = (x @ qkv_kernel + qkv_bias).reshape(batch, length, 3, heads, size)
        attended = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return attended.reshape(batch, length, dim) @ out_kernel + out_bias


class TokenMap(nn.Module):
    """The patch tokens of a sequence as a feature map, (prefix + h * w, D) -> (h, w, D), the
    prefix (class) tokens dropped: a ViT block's output as timm's `forward_intermediates`
    returns it (NHWC here)."""

    grid: tuple[int, int]
    prefix_tokens: int = 1

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        length, dim = analytic.sequence(input_shape, "token_map")
        if length != self.prefix_tokens + math.prod(self.grid):
            raise InvalidValueError(
                f"token_map: {length} tokens are not {self.prefix_tokens} + a {self.grid} grid"
            )
        return Counts("token_map", (*self.grid, dim))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x[:, self.prefix_tokens :].reshape(x.shape[0], *self.grid, x.shape[-1])


class ClassTokenPool(nn.Module):
    """A sequence's first token, (L, D) -> (D,): the class token's final state, which a ViT's
    head reads (Dosovitskiy et al. 2020, Eq. 4)."""

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        _, dim = analytic.sequence(input_shape, "class_token_pool")
        return Counts("class_token_pool", (dim,))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x[:, 0]

"""A network's per-layer table, derived from the module itself with the lecture's formulas.

`describe(model, input_shape)` runs the model's own `init` under `jax.eval_shape` with a
`flax.linen.intercept_methods` interceptor. Every submodule call with an analytic rule is not
run: the rule computes its output shape, parameters and multiply-accumulates from the module's
hyperparameters and the input shape it was called with (`zoo.formulas`), and the interceptor
hands the next layer a placeholder of that shape. So the table is the formulas' alone, walked
through the model's real control flow: nothing is written twice, and the tests hold every row
against the real variables and intermediate outputs.

The rules:
- Flax's built-ins (`Conv`, `ConvTranspose`, `Dense`, `BatchNorm`, `LayerNorm`, `Dropout`) in
  `RULES`;
- any other layer describes itself with a `describe(self, input_shape) -> Counts` method
  (decorate it `@nn.nowrap`). A module that calls submodules and adds an operation of its own
  after them (a residual block's add) also sets `describes_after_children = True`: its
  children are walked first and its row follows them.
A module with no rule is a container: it runs, and its submodules are described. A container
that creates parameters itself has no formula for them, which is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import formulas
from zoo.errors import InvalidTypeError, InvalidValueError

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Counts:
    """What one layer computes for one example: its kind, output shape, parameters, MACs."""

    kind: str
    output_shape: Shape
    params: int = 0
    macs: int = 0


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the analytic summary.

    Attributes:
      name: the Flax module path of the layer, '/'-separated.
      kind: what it computes ("conv", "dense", "batchnorm", "maxpool", ...).
      output_shape: the per-example output, (H, W, C) or (features,).
      params: trainable parameters (the `params` collection).
      macs: multiply-accumulates for one example.
    """

    name: str
    kind: str
    output_shape: Shape
    params: int = 0
    macs: int = 0


class NoAnalyticRuleError(InvalidTypeError):
    """A layer the formulas cannot describe (give it a `describe` method)."""


def spatial(shape: Shape, layer: str) -> tuple[int, int, int]:
    """`shape` as one (H, W, C) map; `InvalidValueError` naming `layer` otherwise."""
    if len(shape) != 3:
        raise InvalidValueError(f"{layer}: expected an (H, W, C) feature map, got {shape}")
    return shape  # type: ignore[return-value]


def sequence(shape: Shape, layer: str) -> tuple[int, int]:
    """`shape` as one (L tokens, D features) sequence; `InvalidValueError` naming `layer` if not."""
    if len(shape) != 2:
        raise InvalidValueError(f"{layer}: expected an (L, D) token sequence, got {shape}")
    return shape  # type: ignore[return-value]


def conv(
    shape: Shape,
    features: int,
    kernel: tuple[int, int],
    strides: tuple[int, int] = (1, 1),
    paddings: tuple[int | None, int | None] = (0, 0),
    *,
    groups: int = 1,
    bias: bool = True,
    kind: str = "conv",
) -> Counts:
    """A 2-D convolution; a padding of None is 'SAME' (output ceil(W / S)). One filter per
    channel (groups = C_in = C_out > 1) is a "depthwise_conv"."""
    h, w, c = spatial(shape, kind)
    out = tuple(
        formulas.same_output_size(n, s) if p is None else formulas.conv_output_size(n, k, s, p)
        for n, k, s, p in zip((h, w), kernel, strides, paddings, strict=True)
    )
    if kind == "conv" and 1 < groups == c == features:
        return Counts(
            "depthwise_conv",
            (*out, features),
            formulas.depthwise_conv_params(c, kernel, bias=bias),
            formulas.depthwise_conv_macs(*out, c, kernel),
        )
    return Counts(
        kind,
        (*out, features),
        formulas.conv_params(c, features, kernel, bias=bias, groups=groups),
        formulas.conv_macs(*out, c, features, kernel, groups=groups),
    )


def pool(
    shape: Shape,
    window: int,
    stride: int,
    padding: int = 0,
    kind: str = "maxpool",
    *,
    ceil_mode: bool = False,
) -> Counts:
    h, w, c = spatial(shape, kind)
    size = [
        formulas.pool_output_size(n, window, stride, padding, ceil_mode=ceil_mode) for n in (h, w)
    ]
    return Counts(kind, (*size, c))


def adaptive_pool(
    shape: Shape, output_size: tuple[int, int], kind: str = "adaptive_avgpool"
) -> Counts:
    """PyTorch's adaptive pooling to `output_size` bins: every bin of
    `formulas.adaptive_pool_window` holds at least one input, whatever the input's size."""
    h, w, c = spatial(shape, kind)
    for size, bins in zip((h, w), output_size, strict=True):
        formulas.adaptive_pool_window(size, bins, bins - 1)  # checks both are positive
    return Counts(kind, (*output_size, c))


def concatenation(shape: Shape, channels: int) -> Counts:
    """Feature maps of `shape`'s height and width concatenated along the channels, `channels`
    in all (an Inception module's branches, a dense layer's input and output)."""
    h, w, _ = spatial(shape, "concat")
    return Counts("concat", (h, w, channels))


def _pair(value: int | tuple[int, ...], layer: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise NoAnalyticRuleError(f"{layer}: only 2-D windows are described, got {value!r}")
    return pair  # type: ignore[return-value]


def _paddings(padding: Any, layer: str) -> tuple[int | None, int | None]:
    """Flax's padding as symmetric per-axis ints; None per axis for 'SAME'."""
    if padding == "SAME":
        return (None, None)
    if padding == "VALID":
        return (0, 0)
    if isinstance(padding, int):
        return (padding, padding)
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pairs) != 2 or any(lo != hi for lo, hi in pairs):
        raise NoAnalyticRuleError(
            f"{layer}: the formulas take symmetric 2-D padding, got {padding!r}"
        )
    return (pairs[0][0], pairs[1][0])


def _check_undilated(module: nn.Module, layer: str, *fields: str) -> None:
    for field in fields:
        value = getattr(module, field, None)
        if value not in (None, 1) and set(_pair(value, layer)) != {1}:
            raise NoAnalyticRuleError(f"{layer}: {field}={value!r} is not described")


def _conv_rule(module: nn.Conv, shape: Shape) -> Counts:
    layer = type(module).__name__
    _check_undilated(module, layer, "input_dilation", "kernel_dilation")
    return conv(
        shape,
        module.features,
        _pair(module.kernel_size, layer),
        _pair(module.strides or 1, layer),
        _paddings(module.padding, layer),
        groups=module.feature_group_count,
        bias=module.use_bias,
    )


def _conv_transpose_rule(module: nn.ConvTranspose, shape: Shape) -> Counts:
    layer = type(module).__name__
    _check_undilated(module, layer, "kernel_dilation")
    kernel, strides = _pair(module.kernel_size, layer), _pair(module.strides or 1, layer)
    if module.padding != "SAME" or module.transpose_kernel or any(k % 2 == 0 for k in kernel):
        raise NoAnalyticRuleError(
            f"{layer}: only 'SAME' padding with odd kernels is described, got "
            f"padding={module.padding!r}, kernel_size={module.kernel_size!r}"
        )
    h, w, c = spatial(shape, layer)
    # Flax's 'SAME' transposed convolution is PyTorch's padding (K-1)/2, output_padding S-1.
    out = tuple(
        formulas.conv_transpose_output_size(n, k, s, (k - 1) // 2, s - 1)
        for n, k, s in zip((h, w), kernel, strides, strict=True)
    )
    # Every input pixel scatters a K x K x C_out patch: the MACs of the matching convolution.
    return Counts(
        "conv_transpose",
        (*out, module.features),
        formulas.conv_params(c, module.features, kernel, bias=module.use_bias),
        formulas.conv_macs(h, w, c, module.features, kernel),
    )


def _dense_rule(module: nn.Dense, shape: Shape) -> Counts:
    *batch, n = shape
    return Counts(
        "dense",
        (*batch, module.features),
        formulas.dense_params(n, module.features, bias=module.use_bias),
        math.prod(batch) * formulas.dense_macs(n, module.features),
    )


def batchnorm(shape: Shape, *, scale: bool = True, bias: bool = True) -> Counts:
    params = formulas.batchnorm_params(shape[-1], scale=scale, bias=bias)
    return Counts("batchnorm", shape, params)


def layernorm(shape: Shape, *, scale: bool = True, bias: bool = True) -> Counts:
    """Layer normalisation over the last axis (the channels of an NHWC map, a token's features)."""
    params = formulas.layernorm_params(shape[-1], scale=scale, bias=bias)
    return Counts("layernorm", shape, params)


def _layernorm_rule(module: nn.LayerNorm, shape: Shape) -> Counts:
    if module.reduction_axes != -1 or module.feature_axes != -1:
        raise NoAnalyticRuleError(
            f"{type(module).__name__}: only normalisation over the last axis is described, got "
            f"reduction_axes={module.reduction_axes!r}, feature_axes={module.feature_axes!r}"
        )
    return layernorm(shape, scale=module.use_scale, bias=module.use_bias)


# Flax's own layers; looked up along the class's MRO, so a subclass keeps its base's rule.
# A rule that returns None makes the layer transparent: no row, the input passes through.
RULES: dict[type[nn.Module], Callable[[Any, Shape], Counts | None]] = {
    nn.Conv: _conv_rule,
    nn.ConvTranspose: _conv_transpose_rule,
    nn.Dense: _dense_rule,
    nn.BatchNorm: lambda m, shape: batchnorm(shape, scale=m.use_scale, bias=m.use_bias),
    nn.LayerNorm: _layernorm_rule,
    nn.Dropout: lambda m, shape: None,
}


def _rule(module: nn.Module) -> Callable[[Shape], Counts | None] | None:
    own = getattr(module, "describe", None)
    if own is not None:
        return own
    for cls in type(module).__mro__:
        if cls in RULES:
            return functools.partial(RULES[cls], module)
    return None


def _unbound(model: nn.Module) -> nn.Module:
    """A fresh top-level copy of `model` (hashable by its config, usable as a cache key)."""
    return model.clone(parent=None, name=None)


def describe(model: nn.Module, input_shape: Shape) -> tuple[Layer, ...]:
    """The analytic layers of `model` on one example of `input_shape` (H, W, C).

    Raises `InvalidValueError` where a formula says the input does not fit (e.g. a window
    larger than its input), and `NoAnalyticRuleError` for a layer with no rule.
    """
    described = _described(_unbound(model), tuple(input_shape))
    if isinstance(described, InvalidValueError):
        raise type(described)(*described.args) from None
    return described


@functools.lru_cache(maxsize=256)
def _described(model: nn.Module, input_shape: Shape) -> tuple[Layer, ...] | InvalidValueError:
    """`_describe`, or the error saying the input does not fit: both are kept, since an input
    found too small is described again (`ImageModel.check_input` searches for the smallest
    that fits, to say so)."""
    try:
        return _describe(model, input_shape)
    except InvalidValueError as error:
        return error.with_traceback(None)  # Its frames held the trace's values.


def _describe(model: nn.Module, input_shape: Shape) -> tuple[Layer, ...]:
    layers: list[Layer] = []

    def interceptor(next_fun, args, kwargs, context):
        module, method = context.module, context.method_name
        if method == "check_input":
            return None  # The description is what checks the input: see ImageModel.check_input.
        if method != "__call__" or not module.path:
            return next_fun(*args, **kwargs)
        x, name = args[0], "/".join(module.path)
        rule = _rule(module)
        if rule is None:
            output = next_fun(*args, **kwargs)
            if jax.tree.leaves(module.variables.get("params", {})):
                raise NoAnalyticRuleError(
                    f"{name}: {type(module).__name__} creates parameters but has no analytic "
                    "rule; give it a `describe(self, input_shape) -> zoo.analytic.Counts` method"
                )
            return output
        if getattr(module, "describes_after_children", False):
            output = next_fun(*args, **kwargs)
            counts = _apply(rule, name, tuple(x.shape[1:]))
        else:
            counts = _apply(rule, name, tuple(x.shape[1:]))
            if counts is None:
                return x
            output = _placeholder(x, (x.shape[0], *counts.output_shape))
        layers.append(Layer(name, **dataclasses.asdict(counts)))
        return output

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
    return tuple(layers)


def _placeholder(x: jax.Array, shape: Shape) -> jax.Array:
    """Zeros of `shape` and `x`'s dtype: the next layer's input, shaped as the formulas say."""
    return jnp.zeros(shape, x.dtype)


def _apply(rule: Callable[[Shape], Counts | None], name: str, shape: Shape) -> Counts | None:
    try:
        return rule(shape)
    except InvalidValueError as error:
        raise InvalidValueError(f"{name}: {error}") from None


def smallest_square_input(model: nn.Module, input_shape: Shape, limit: int = 2**16) -> int | None:
    """The least S for which an (S, S, C) input fits every layer of `model` (None: none up to
    `limit`); C is `input_shape`'s. Only for error messages: it describes the model ~log2(S) times.
    """

    def fits(side: int) -> bool:
        try:
            describe(model, (side, side, input_shape[-1]))
        except InvalidValueError:
            return False
        return True

    if fits(1):
        return 1
    high = max(input_shape[:-1])
    while not fits(high):
        if high > limit:
            return None
        high *= 2
    low = 0  # The windows only grow harder to fit as the input shrinks: bisect (low, high].
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high

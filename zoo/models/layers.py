"""Small building blocks shared by the model families.

Pooling is a module here (not a bare function call) so that it has a stable name in the module
tree: `capture_intermediates` then records its output, which is how the tests check the analytic
shapes and how feature extraction finds a stage by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
            raise ValueError(f"{model}: {name} must be positive integer(s), got {value!r}")


def check_choice(model: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"{model}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def check_input(
    model: str, x: jax.Array, expected: tuple[int, int, int], *, fixed_size: bool
) -> None:
    """Raises `ValueError` before tracing goes any further when `x` cannot be this model's input.

    `expected` is (height, width, channels); a model that is not `fixed_size` accepts any
    height and width but still needs the channel count.
    """
    h, w, c = expected
    want = f"(batch, {h}, {w}, {c})" if fixed_size else f"(batch, height, width, {c})"
    if x.ndim != 4:
        raise ValueError(f"{model} expects NHWC images of shape {want}, got shape {x.shape}")
    if x.shape[-1] != c or (fixed_size and x.shape[1:3] != (h, w)):
        raise ValueError(f"{model} expects NHWC images of shape {want}, got shape {x.shape}")


def explicit_padding(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding like PyTorch's `padding=p` (Flax's 'SAME' is asymmetric at stride 2)."""
    return ((padding, padding), (padding, padding))


class MaxPool(nn.Module):
    """Max pooling over a `window` x `window` patch; padding counts as -inf."""

    window: int
    stride: int
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.max_pool(
            x,
            (self.window, self.window),
            (self.stride, self.stride),
            explicit_padding(self.padding),
        )


class AvgPool(nn.Module):
    """Average pooling over a `window` x `window` patch (no padding)."""

    window: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.avg_pool(x, (self.window, self.window), (self.stride, self.stride))


class GlobalAvgPool(nn.Module):
    """Mean over height and width: (N, H, W, C) -> (N, C)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x, axis=(1, 2))


class Flatten(nn.Module):
    """(N, ...) -> (N, prod(...)), in NHWC order (PyTorch flattens CHW: see the importer)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


class Reshape(nn.Module):
    """(N, ...) -> (N, *shape)."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], *self.shape)


def batch_norm(train: bool, dtype: Dtype, name: str, scale_init: Any = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's constants (momentum 0.1 there is 0.9 here, eps 1e-5)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        scale_init=scale_init or nn.initializers.ones,
        name=name,
    )

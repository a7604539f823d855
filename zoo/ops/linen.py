"""`flax.linen.Conv` and `flax.linen.Dense` as the zoo's models use them.

Both have Flax's fields, parameters, parameter names and initial values, bit for bit, so
checkpoints move between them and Flax's layers unchanged. Their kernels are drawn by
`zoo.ops.initializers` (JAX's values, compiled once for every shape: an eager `init` of a deep
network otherwise compiles a draw for each distinct kernel shape). `Conv` computes through
`zoo.ops.conv_general_dilated` and adds its bias in float32 (at least), rounding the sum once,
as oneDNN's and PyTorch's bf16 convolutions do: for a bf16 convolution `nn.Conv` rounds the
bias to bf16 first, and its gradient is then a bf16 sum.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from zoo.ops import initializers
from zoo.ops.conv import conv_general_dilated


def _wide_bias(*args: Any, dtype: Any = None, inexact: bool = True) -> list[Any]:
    """Flax's `promote_dtype` for (inputs, kernel, bias), the bias widened to float32 at least."""
    inputs, kernel, bias = args
    inputs, kernel = dtypes.promote_dtype(inputs, kernel, dtype=dtype, inexact=inexact)
    if bias is not None:
        bias = bias.astype(jnp.promote_types(inputs.dtype, jnp.float32))
    return [inputs, kernel, bias]


class Conv(nn.Conv):
    """`flax.linen.Conv` through the zoo's convolution, its bias added in float32 (see module).

    What `capture_intermediates` records for it is that float32 sum, before its rounding to
    `dtype`: Flax records the call of `nn.Conv`'s own `__call__`.
    """

    conv_general_dilated: Any = conv_general_dilated
    kernel_init: Any = initializers.lecun_normal()
    promote_dtype: Any = _wide_bias

    @nn.nowrap  # Flax's `__call__` alone is the layer's call: intercepted and recorded once.
    def __call__(self, inputs: jax.Array) -> jax.Array:
        dtype = self.dtype or jnp.promote_types(inputs.dtype, self.param_dtype)
        return super().__call__(inputs).astype(dtype)


class Dense(nn.Dense):
    """`flax.linen.Dense`, its kernel drawn by `zoo.ops.initializers` (see module)."""

    kernel_init: Any = initializers.lecun_normal()

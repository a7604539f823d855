"""The zoo's own kernels: oneDNN convolutions and batch norms, and the extension's max pooling
and residual join, on CPU through the XLA FFI; XLA elsewhere.

`conv_general_dilated` is a drop-in for `jax.lax.conv_general_dilated`, `Conv` for
`flax.linen.Conv`, `Dense` for `flax.linen.Dense`, and `runs_on_onednn` says whether a
convolution of given shapes runs on oneDNN; `batch_norm_training` and
`batch_norm_inference` are the arithmetic of `zoo.models.layers.BatchNorm`, `max_pool` that of
`zoo.models.layers.MaxPool`, `add_relu` ResNet's residual join `relu(x + shortcut)`;
`portable()` traces XLA's own ops only (for `jax.export`); `native_available()` says whether
the oneDNN extension is loaded. Each op differentiates to any order in both modes
(`autodiff`). `ZOO_NATIVE=0` forces XLA.
`on_cpu(cpu_fn, default_fn, *operands)` is the per-backend choice the zoo's CPU-only kernels use;
`sharding` runs the oneDNN convolutions per batch shard under a sharded `jax.jit`.
`initializers` are JAX's variance-scaling initializers with the same values, faster to compile.
`dot_product_attention` is `jax.nn.dot_product_attention` (cuDNN's fused attention on GPUs),
in the form XLA:CPU runs fastest on CPU.
"""

from zoo.ops import initializers, native, sharding
from zoo.ops.attention import dot_product_attention
from zoo.ops.backend import on_cpu, portable
from zoo.ops.batch_norm import batch_norm_inference, batch_norm_training
from zoo.ops.conv import Conv, conv_general_dilated, runs_on_onednn
from zoo.ops.dense import Dense
from zoo.ops.native import NativeUnavailableWarning
from zoo.ops.pooling import max_pool
from zoo.ops.residual import add_relu


def native_available() -> bool:
    """Whether the oneDNN extension is loaded (loads it on first call; False if switched off)."""
    return native.library() is not None


__all__ = [
    "Conv",
    "Dense",
    "NativeUnavailableWarning",
    "add_relu",
    "batch_norm_inference",
    "batch_norm_training",
    "conv_general_dilated",
    "dot_product_attention",
    "initializers",
    "max_pool",
    "native_available",
    "on_cpu",
    "portable",
    "runs_on_onednn",
    "sharding",
]

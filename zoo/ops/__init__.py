"""The zoo's ops: what the models compute, and the only code that knows the backend.

Models say what they compute with these; the ops choose the kernels. On CPU they run the
native extension's kernels through the XLA FFI (oneDNN's convolutions and batch norms, the
extension's Winograd convolutions, max pooling and residual join) wherever it has one for the
configuration; on GPU and TPU, under `portable()`, and with `ZOO_NATIVE=0`, XLA's own ops. Each
computes what its reference computes (to float rounding where a kernel sums in another order;
Winograd's rounding: `conv_general_dilated`), and differentiates to any order in both modes.

- `conv_general_dilated`: `jax.lax.conv_general_dilated`; `runs_on_onednn` says whether a
  convolution runs on the extension in all three directions.
- `Conv`, `Dense`: `flax.linen.Conv` and `Dense` with the same parameters and initial values
  (`initializers`: JAX's variance-scaling initializers, compiled once for every shape).
- `batch_norm_training`, `batch_norm_inference`: `zoo.models.layers.BatchNorm`'s arithmetic,
  with its ReLU fused where `relu=True`; `add_relu`: `relu(x + shortcut)`. These two are the
  only fusions the models ask for: a model writes `BatchNorm(relu=True)` for a batch norm
  followed by a ReLU, and `add_relu` for a residual join.
- `max_pool`: `nn.max_pool` with symmetric padding; `spatial_mean`: the mean over H and W.
- `dot_product_attention`: `jax.nn.dot_product_attention` (cuDNN's fused attention on GPUs),
  in the form XLA:CPU runs fastest on CPU.
- `portable()`: a context in which they trace XLA's ops only (for `jax.export`);
  `native_available()`: whether the extension is loaded; `on_cpu`: the per-backend choice.
  `sharding` runs the kernels per batch shard under a sharded `jax.jit`.
"""

from zoo.ops import initializers, native, sharding
from zoo.ops.attention import dot_product_attention
from zoo.ops.backend import on_cpu, portable
from zoo.ops.batch_norm import batch_norm_inference, batch_norm_training
from zoo.ops.conv import conv_general_dilated, runs_on_onednn
from zoo.ops.linen import Conv, Dense
from zoo.ops.native import NativeUnavailableWarning
from zoo.ops.pooling import max_pool, spatial_mean
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
    "spatial_mean",
]

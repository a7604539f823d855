"""The zoo's own kernels: oneDNN convolutions on CPU through the XLA FFI, XLA elsewhere.

`conv_general_dilated` is a drop-in for `jax.lax.conv_general_dilated`, `Conv` for
`flax.linen.Conv`; `portable()` traces XLA's convolution only (for `jax.export`);
`native_available()` says whether the oneDNN extension is loaded. `ZOO_NATIVE=0` forces XLA.
`on_cpu(cpu_fn, default_fn, *operands)` is the per-backend choice the zoo's CPU-only kernels use.
"""

from zoo.ops import native
from zoo.ops.conv import Conv, conv_general_dilated, on_cpu, portable
from zoo.ops.native import NativeUnavailableWarning


def native_available() -> bool:
    """Whether the oneDNN extension is loaded (loads it on first call; False if switched off)."""
    return native.library() is not None


__all__ = [
    "Conv",
    "NativeUnavailableWarning",
    "conv_general_dilated",
    "native_available",
    "on_cpu",
    "portable",
]

"""Loads the native extension (`csrc/`: oneDNN's kernels, the zoo's max pooling and residual
join) and registers its XLA FFI targets.

The extension is a shared library built beside this file by the package's build (`setup.py`),
linked against `libdnnl.so.3` from the `onednn-cpu-gomp` wheel. It is loaded with ctypes the
first time a convolution, batch norm, max pool or residual join is traced, not at `import zoo`.
Where it cannot be loaded (not built here, another OS or architecture, oneDNN missing),
`library()` returns None, the zoo's kernels run on XLA, and one warning says why and how to get
the fast path.

- `ZOO_NATIVE=0` switches the native kernels off (nothing is loaded, no warning).
- `ZOO_DNNL_LIBRARY=/path/to/libdnnl.so.3` loads that oneDNN instead of the wheel's.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from zoo import runtime

NATIVE_ENV = "ZOO_NATIVE"
DNNL_LIBRARY_ENV = "ZOO_DNNL_LIBRARY"
DNNL_SONAME = "libdnnl.so.3"
DNNL_DISTRIBUTION = "onednn-cpu-gomp"
EXTENSION_STEM = "_onednn"

# The ops of the extension: each has `zoo_onednn_<op>_implementation` and `_config_fields`.
CONV, BATCH_NORM = "conv", "batch_norm"
# Convolution directions, and batch-norm kinds: the first argument of an op's query.
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = 0, 1, 2
TRAINING, INFERENCE, TRAINING_BACKWARD, INFERENCE_BACKWARD = 0, 1, 2, 3
# The dtypes the kernels take, as the C side's `Precision`.
PRECISIONS = {jnp.dtype(jnp.float32): 0, jnp.dtype(jnp.bfloat16): 1}
# Each op's FFI targets by direction or kind (both batch-norm gradients are one handler).
CONV_TARGETS = {
    FORWARD: "zoo_onednn_conv_forward",
    BACKWARD_DATA: "zoo_onednn_conv_backward_data",
    BACKWARD_WEIGHTS: "zoo_onednn_conv_backward_weights",
}
BATCH_NORM_TARGETS = {
    TRAINING: "zoo_onednn_batch_norm_training",
    INFERENCE: "zoo_onednn_batch_norm_inference",
    TRAINING_BACKWARD: "zoo_onednn_batch_norm_backward",
    INFERENCE_BACKWARD: "zoo_onednn_batch_norm_backward",
}
# The extension's own max pooling (`csrc/max_pool.cc`; no oneDNN, no query: it runs any config).
MAX_POOL_TARGETS = ("zoo_max_pool_forward", "zoo_max_pool_backward")
# The residual join relu(x + shortcut) (`csrc/add_relu.cc`; no oneDNN, no query either).
ADD_RELU_TARGETS = ("zoo_add_relu_forward", "zoo_add_relu_backward")
# The Winograd 3x3 convolution and its weight gradient (`csrc/winograd_conv.cc`; their
# products on oneDNN's matmul).
WINOGRAD_TARGET = "zoo_winograd_conv3x3"
WINOGRAD_WEIGHTS_TARGET = "zoo_winograd_conv3x3_weights"
# The weight gradient of bf16 3x3 convolutions on AVX512-BF16 (`csrc/bf16_conv3x3_weights.cc`).
BF16_WEIGHTS_TARGET = "zoo_bf16_conv3x3_weights"
# The bf16 Winograd F(2x2, 3x3) convolution (`csrc/winograd_bf16_conv.cc`; its products on
# oneDNN's bf16 matmul).
WINOGRAD_BF16_TARGET = "zoo_winograd_bf16_conv3x3"
TARGETS = (
    *dict.fromkeys([*CONV_TARGETS.values(), *BATCH_NORM_TARGETS.values()]),
    *MAX_POOL_TARGETS,
    *ADD_RELU_TARGETS,
    WINOGRAD_TARGET,
    WINOGRAD_WEIGHTS_TARGET,
    BF16_WEIGHTS_TARGET,
    WINOGRAD_BF16_TARGET,
)
# Everything the Python side calls in the extension: its FFI targets and plain-C queries.
SYMBOLS = (
    *TARGETS,
    *(
        f"zoo_onednn_{op}_{query}"
        for op in (CONV, BATCH_NORM)
        for query in ("implementation", "config_fields")
    ),
    "zoo_onednn_batch_norm_workspace_bytes",
    "zoo_winograd_conv3x3_available",
    "zoo_bf16_conv3x3_weights_available",
    "zoo_winograd_bf16_conv3x3_available",
)
HOW_TO_GET_IT = (
    "on Linux x86_64, reinstall jax-zoo with a C++17 compiler available "
    "(pip install --force-reinstall --no-deps jax-zoo), which builds it against onednn-cpu-gomp"
)


class NativeUnavailableWarning(RuntimeWarning):
    """The oneDNN kernels could not be loaded: the zoo's convolutions run on XLA."""


def enabled() -> bool:
    """False when `ZOO_NATIVE` is 0/false/no/off: the zoo then never loads the extension."""
    return not runtime.opted_out(NATIVE_ENV)


def _dnnl_candidates() -> list[Path]:
    if os.environ.get(DNNL_LIBRARY_ENV):
        return [Path(os.environ[DNNL_LIBRARY_ENV])]
    found = []
    try:
        files = importlib.metadata.distribution(DNNL_DISTRIBUTION).files or []
        found = [Path(f.locate()) for f in files if f.name == DNNL_SONAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    return [*found, Path(sys.prefix) / "lib" / DNNL_SONAME]


def _extension_path() -> Path | None:
    built = sorted(Path(__file__).parent.glob(f"{EXTENSION_STEM}*.so"))
    return built[0] if built else None


def _load() -> ctypes.CDLL:
    """oneDNN (RTLD_GLOBAL, so the extension's reference to its soname resolves to it), then
    the extension, its targets registered; OSError with the reason when either is missing."""
    candidates = _dnnl_candidates()
    dnnl = next((path for path in candidates if path.is_file()), None)
    if dnnl is None:
        raise OSError(f"{DNNL_SONAME} not found (looked at {', '.join(map(str, candidates))})")
    extension = _extension_path()
    if extension is None:
        raise OSError(
            f"the extension {EXTENSION_STEM}*.so was not built into {Path(__file__).parent}"
        )
    ctypes.CDLL(str(dnnl), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(extension))
    missing = [name for name in SYMBOLS if not hasattr(lib, name)]
    if missing:  # a build of an older csrc/, kept by an editable install
        raise OSError(
            f"the extension {extension.name} was built from another version of csrc/ "
            f"(it lacks {', '.join(missing)})"
        )
    for op in (CONV, BATCH_NORM):
        query = getattr(lib, f"zoo_onednn_{op}_implementation")
        query.restype = ctypes.c_int
        query.argtypes = [
            ctypes.c_int64,
            ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int64,
            ctypes.c_char_p,
            ctypes.c_int64,
        ]
        getattr(lib, f"zoo_onednn_{op}_config_fields").restype = ctypes.c_int64
    lib.zoo_winograd_conv3x3_available.restype = ctypes.c_int
    lib.zoo_bf16_conv3x3_weights_available.restype = ctypes.c_int
    lib.zoo_winograd_bf16_conv3x3_available.restype = ctypes.c_int
    workspace = lib.zoo_onednn_batch_norm_workspace_bytes
    workspace.restype = ctypes.c_int64
    workspace.argtypes = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded extension, or None (switched off, or not loadable: warned once)."""
    if not enabled():
        return None
    try:
        return _load()
    except OSError as error:
        warnings.warn(
            f"jax-zoo: oneDNN kernels unavailable ({error}); convolutions, batch norms, "
            "max pooling and residual joins run on XLA. "
            f"To get the fast CPU path, {HOW_TO_GET_IT}; set {NATIVE_ENV}=0 to silence this.",
            NativeUnavailableWarning,
            stacklevel=2,
        )
        return None


@functools.cache
def implementation(op: str, kind: int, config: tuple[int, ...]) -> tuple[bool, str]:
    """(whether oneDNN runs `kind` of `op` (`CONV` or `BATCH_NORM`) on `config` with a real,
    non-reference kernel, the kernel's name). `config` lists the fields of `ConvConfig` in
    `csrc/onednn_conv.cc` or of `NormConfig` in `csrc/onednn_batch_norm.cc`."""
    lib = library()
    if lib is None:
        return False, "not loaded"
    if getattr(lib, f"zoo_onednn_{op}_config_fields")() != len(config):
        return False, f"extension built from another version of csrc/onednn_{op}.cc"
    values = (ctypes.c_int64 * len(config))(*config)
    name = ctypes.create_string_buffer(256)
    query = getattr(lib, f"zoo_onednn_{op}_implementation")
    status = query(kind, values, len(config), name, len(name))
    return status == 1, name.value.decode()


@functools.cache
def winograd_available() -> bool:
    """Whether the Winograd 3x3 convolution runs here: the extension is loaded, the CPU has
    AVX-512 (its transforms' ISA, the one it was measured on) and oneDNN a float32 matmul."""
    lib = library()
    return lib is not None and lib.zoo_winograd_conv3x3_available() == 1


@functools.cache
def bf16_weights_available() -> bool:
    """Whether the bf16 3x3 weight gradient runs here: the extension is loaded and the CPU has
    AVX-512 with AVX512-BF16 (its dot products' instruction)."""
    lib = library()
    return lib is not None and lib.zoo_bf16_conv3x3_weights_available() == 1


@functools.cache
def winograd_bf16_available() -> bool:
    """Whether the bf16 Winograd 3x3 convolution runs here: the extension is loaded, the CPU has
    AVX-512 with AVX512-BF16 and oneDNN a bf16 matmul kernel for it."""
    lib = library()
    return lib is not None and lib.zoo_winograd_bf16_conv3x3_available() == 1


def batch_norm_workspace_bytes(config: tuple[int, ...]) -> int:
    """The bytes of the workspace oneDNN's training batch norm of `config` (`NormConfig`'s
    fields) writes for its gradient: a bit per element with a fused ReLU, else none. Call only
    where `implementation` found its kernel."""
    values = (ctypes.c_int64 * len(config))(*config)
    size = library().zoo_onednn_batch_norm_workspace_bytes(TRAINING, values, len(config))
    if size < 0:
        raise ValueError(f"oneDNN has no training batch norm for {config}")
    return size


def kernel_dtype(dtype: Any, has_kernel: Callable[[Any], bool]) -> Any:
    """The dtype oneDNN computes a `dtype` op in: its own where `has_kernel(dtype)`, else
    float32 where `has_kernel(float32)` (None where neither). bf16 without a bf16 kernel (no
    AVX512-BF16 or AMX) so runs oneDNN's float32 one on the exactly widened operands, its
    result rounded once: bf16 with float32 accumulation, as a bf16 kernel computes it."""
    candidates = dict.fromkeys((jnp.dtype(dtype), jnp.dtype(jnp.float32)))
    return next((d for d in candidates if has_kernel(d)), None)

"""jax-zoo's XLA:CPU and malloc defaults, and the persistent compilation cache of the CLI.

`apply_xla_defaults()` runs at `import zoo`, before any JAX backend exists: it appends to
`XLA_FLAGS` the XLA:CPU options measured to train the zoo's networks fastest on CPU of those
that keep XLA's semantics (see `bench/README.md` for the numbers). XLA reads `XLA_FLAGS` once,
when the first backend initialises, so the options only take effect if `zoo` is imported before
JAX computes anything. They change which kernels XLA:CPU runs, not what is computed (the
results agree to float rounding, and a NaN stays a NaN), and they touch only the CPU compiler:
GPU and TPU compilations ignore them.

- A flag the user already put in `XLA_FLAGS` is never overridden.
- `ZOO_XLA_DEFAULTS=0` opts out (the environment variable must be set before `import zoo`).
- Nothing is applied when `JAX_PLATFORMS` names no CPU, or when the installed jaxlib is not a
  version they were verified on: XLA aborts the process on a flag it does not know.

`apply_malloc_defaults()` also runs at `import zoo`, under the same conditions (and not where a
GPU or TPU plugin is installed): it makes glibc's malloc keep XLA:CPU's per-execution buffers
mapped from one step to the next (`MALLOC_DEFAULTS` below says why). `ZOO_MALLOC_DEFAULTS=0`
opts out.

`enable_compilation_cache()` turns on JAX's persistent compilation cache, so a second run of the
same training job skips XLA compilation (ResNet-152's train step: 7-12 s on 2 cores).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path

# --xla_cpu_experimental_ynn_fusion_type picks the ops XLA:CPU hands to the YNNPACK library.
# jaxlib 0.10's default is individual_dot,individual_convolution,reduce. The zoo keeps
# convolutions in XLA's own (Eigen) kernels, faster than YNNPACK's on its networks where XLA
# runs them (the fallback paths), and hands YNNPACK single dots and reductions as jaxlib does,
# but no more: its fused elementwise kernels (`eltwise`) and dots with fused epilogues (`dot`)
# compute max(NaN, 0) = 0 for arrays of 4,096 elements or more, which would change
# `jnp.maximum` and `relu` in every program importing zoo. Measured against `eltwise`: no cost
# on the native path; on XLA's convolutions, ResNet-20's step up to 1.4x (bench/README.md).
# Its reductions take in the elementwise ops before them and drop a NaN in their max too (in
# `jnp.max`, or the mean of a relu), as under jaxlib's defaults; without them the steps that run
# batch norm on XLA (several devices, no extension) took 15-25% longer, so they stay, and the
# zoo's global average pool sums by a contraction instead (`zoo.models.layers.GlobalAvgPool`).
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_CPU_DEFAULTS: tuple[str, ...] = (f"{YNN_FUSION_FLAG}=individual_dot,reduce",)

# glibc's malloc gives each block above 32 MiB its own mmap and unmaps it when it is freed, and
# each thread its own arena (whose big blocks are mmaps too). XLA:CPU allocates an execution's
# temporaries as one block (ResNet-20's train step at batch 128: 292 MB), so every step had the
# kernel fault in and zero all of it again: 71k page faults, a quarter of the step's CPU time
# (bench/README.md). One arena that grows with brk and is never trimmed keeps the block mapped
# and reused: the process keeps its peak heap instead of returning it between steps.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # <malloc.h>
MALLOC_DEFAULTS: tuple[tuple[int, int], ...] = (
    (M_ARENA_MAX, 1),
    (M_MMAP_MAX, 0),
    (M_TRIM_THRESHOLD, -1),  # -1: never trim (mallopt(3))
)
MALLOC_OPT_OUT_ENV = "ZOO_MALLOC_DEFAULTS"

OPT_OUT_ENV = "ZOO_XLA_DEFAULTS"
# The jaxlib releases the flags were verified on: 0.10.2 measured here, 0.12 in the project's
# notes (the flag is experimental: a later XLA may rename it, and XLA aborts on an unknown flag).
VERIFIED_JAXLIB = ((0, 10), (0, 12))

CACHE_DIR_ENV = "ZOO_COMPILATION_CACHE_DIR"
CACHE_OPT_OUT_ENV = "ZOO_COMPILATION_CACHE"
CACHE_MAX_BYTES = 2 * 2**30  # least recently used entries go beyond this


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _platform_may_be_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return not platforms or "cpu" in platforms.lower().split(",")


def _backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def opted_out(env: str) -> bool:
    """Whether the environment variable `env` is 0/false/no/off (any case): a zoo switch off."""
    return os.environ.get(env, "1").strip().lower() in ("0", "false", "no", "off")


def _accelerator_plugin_installed() -> bool:
    """A JAX GPU (`jax_plugins.*`) or TPU (`libtpu`) plugin is installed."""
    return any(importlib.util.find_spec(name) is not None for name in ("jax_plugins", "libtpu"))


def apply_malloc_defaults() -> bool:
    """Sets `MALLOC_DEFAULTS` with glibc's `mallopt`; returns whether it did.

    Does nothing when opted out (`ZOO_MALLOC_DEFAULTS=0`), off Linux/glibc, when `JAX_PLATFORMS`
    excludes the CPU or a GPU/TPU plugin is installed (the CPU then only stages data). Warns,
    and does nothing, when a JAX backend already exists: its threads have their arenas.
    """
    if opted_out(MALLOC_OPT_OUT_ENV) or not _platform_may_be_cpu():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _accelerator_plugin_installed():
        return False
    if _backends_initialised():
        warnings.warn(
            "jax-zoo: a JAX backend was initialised before `import zoo`, so its malloc "
            "defaults cannot take effect (each train step re-faults XLA's buffers); import zoo "
            f"first, or set {MALLOC_OPT_OUT_ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in MALLOC_DEFAULTS)


def apply_xla_defaults() -> list[str]:
    """Appends the zoo's XLA:CPU flags to `XLA_FLAGS`; returns the flags it added.

    Adds nothing when opted out (`ZOO_XLA_DEFAULTS=0`), when `JAX_PLATFORMS` excludes the CPU,
    when jaxlib is not a verified version, or for a flag `XLA_FLAGS` already sets. Warns, and
    adds nothing, when a JAX backend already exists (it would not read them any more).
    """
    if opted_out(OPT_OUT_ENV):
        return []
    version = _jaxlib_version()
    if not _platform_may_be_cpu() or version is None:
        return []
    if not VERIFIED_JAXLIB[0] <= version <= VERIFIED_JAXLIB[1]:
        return []
    current = os.environ.get("XLA_FLAGS", "")
    present = {_flag_name(token) for token in current.split()}
    missing = [flag for flag in XLA_CPU_DEFAULTS if _flag_name(flag) not in present]
    if not missing:
        return []
    if _backends_initialised():
        warnings.warn(
            "jax-zoo: a JAX backend was initialised before `import zoo`, so its XLA:CPU "
            f"defaults ({' '.join(missing)}) cannot take effect; import zoo first or put "
            "them in XLA_FLAGS yourself.",
            RuntimeWarning,
            stacklevel=2,
        )
        return []
    os.environ["XLA_FLAGS"] = " ".join([*current.split(), *missing])
    return missing


def default_cache_dir() -> Path:
    """`$ZOO_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/jax-zoo/xla` (~/.cache/jax-zoo/xla)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jax-zoo" / "xla"


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache; returns its folder, or None if left off.

    The folder is `path`, else `default_cache_dir()`. Left off when `ZOO_COMPILATION_CACHE=0`;
    a cache folder the user already configured in JAX (`JAX_COMPILATION_CACHE_DIR` or
    `jax.config`) is kept as it is. Every compilation is cached, however short: a zoo job's
    dozen small programs (initialisation, evaluation) add up on CPU. The cache key includes
    the program, `XLA_FLAGS`, and the jax/jaxlib versions, so a stale entry is never used;
    beyond 2 GiB the least recently used entries are evicted (unless JAX already has a limit).
    """
    if opted_out(CACHE_OPT_OUT_ENV):
        return None
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(
            f"jax-zoo: compilation cache disabled, cannot create {folder}: {error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size == -1:  # unbounded: evict beyond CACHE_MAX_BYTES
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return folder


# Applied when `zoo` is imported (zoo/__init__.py imports this module first).
APPLIED_XLA_FLAGS: list[str] = apply_xla_defaults()
APPLIED_MALLOC_DEFAULTS: bool = apply_malloc_defaults()

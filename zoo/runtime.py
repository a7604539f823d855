"""The CPU settings the zoo's own entry points apply, and the CLI's compilation cache.

Nothing here runs at `import zoo`: a library must not change its host process. The zoo's entry
points (the `zoo` command, `train/train.py`, `zoo.training.train`) call `configure_cpu()` first;
anyone else may, as the first line of their program:

- XLA:CPU's library fusions (`XLA_CPU_DEFAULTS`), appended to `XLA_FLAGS`: which kernels
  XLA:CPU runs, not what they compute (results agree to float rounding, a NaN stays a NaN).
  XLA reads `XLA_FLAGS` once, when the first backend starts.
- glibc malloc options (`malloc_options`) that keep XLA:CPU's per-step temporaries mapped
  between steps instead of faulting them in again every step.

A flag the user already put in `XLA_FLAGS` is never overridden; `ZOO_XLA_DEFAULTS=0` and
`ZOO_MALLOC_DEFAULTS=0` switch either off; nothing is applied where `JAX_PLATFORMS` names no CPU,
and the malloc options not where a GPU or TPU plugin is installed (the CPU only stages data
there). bench/README.md, "CPU settings", has what each is worth.

`enable_compilation_cache()` turns on JAX's persistent compilation cache (the CLI does), so a
second run of the same job skips XLA compilation.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path

# --xla_cpu_experimental_ynn_fusion_type picks the ops XLA:CPU hands to the YNNPACK library.
# jaxlib 0.10's default is individual_dot,individual_convolution,reduce. The zoo keeps the
# convolutions XLA runs (its fallback paths) in XLA's own kernels, faster on its networks, and
# adds no other kind: YNNPACK's fused elementwise kernels (`eltwise`) and dots with fused
# epilogues (`dot`) compute max(NaN, 0) = 0 from 4,096 elements on, which would change `relu`
# in every program of the process (bench/README.md, "CPU settings").
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_CPU_DEFAULTS: tuple[str, ...] = (f"{YNN_FUSION_FLAG}=individual_dot,reduce",)
XLA_OPT_OUT_ENV = "ZOO_XLA_DEFAULTS"
# The jaxlib releases the flag was verified on (it is experimental: a later XLA may rename it,
# and XLA aborts the process on a flag it does not know).
VERIFIED_JAXLIB = ((0, 10), (0, 12))

# mallopt(3) parameters, <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_OPT_OUT_ENV = "ZOO_MALLOC_DEFAULTS"
# mallopt takes a C int: 2 GiB - 1 is the largest bound it can set.
MALLOC_KEEP_LIMIT = 2**31 - 1

CACHE_DIR_ENV = "ZOO_COMPILATION_CACHE_DIR"
CACHE_OPT_OUT_ENV = "ZOO_COMPILATION_CACHE"
CACHE_MAX_BYTES = 2 * 2**30  # least recently used entries go beyond this


@dataclasses.dataclass(frozen=True)
class CpuSettings:
    """What one `configure_cpu()` call set: the flags it appended to `XLA_FLAGS`, and the
    `mallopt` (parameter name, value) pairs it applied. Empty where it set nothing."""

    xla_flags: tuple[str, ...] = ()
    malloc: tuple[tuple[str, int], ...] = ()


def malloc_options(physical_memory: int) -> tuple[tuple[str, int, int], ...]:
    """(name, mallopt parameter, value) of the zoo's malloc options on a machine with this
    many bytes of memory.

    XLA:CPU allocates an execution's temporaries as one block (ResNet-20's train step at batch
    128: 190 MB), from its worker threads. glibc gives each thread an arena whose heaps hold at
    most 64 MiB, and serves any larger block with a fresh `mmap` that it unmaps on `free`: every
    step the kernel then faults in and zeroes the whole block again. So:

    - one arena (`M_ARENA_MAX` 1): the main one, whose heap can hold a block of any size;
    - blocks up to `keep` bytes from that heap, not `mmap` (`M_MMAP_THRESHOLD`);
    - freed memory at the heap's top returned to the system only beyond `keep` bytes
      (`M_TRIM_THRESHOLD`): a step's freed temporaries stay for the next step.

    `keep` is a quarter of the machine's memory, at most `MALLOC_KEEP_LIMIT`: a block larger
    than that is mapped and unmapped per use as glibc's defaults do, and the heap keeps at most
    that much free memory.
    """
    keep = max(0, min(physical_memory // 4, MALLOC_KEEP_LIMIT))
    return (
        ("M_ARENA_MAX", M_ARENA_MAX, 1),
        ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, keep),
        ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, keep),
    )


def opted_out(env: str) -> bool:
    """Whether the environment variable `env` is 0/false/no/off (any case): a zoo switch off."""
    return os.environ.get(env, "1").strip().lower() in ("0", "false", "no", "off")


def configure_cpu(*, xla_flags: bool = True, malloc: bool = True) -> CpuSettings:
    """Applies the zoo's CPU settings to this process; returns what it set.

    Call it first, before any JAX computation: XLA reads `XLA_FLAGS`, and its threads take
    their malloc arenas, when the first JAX backend starts. Called later, it warns and sets
    nothing. `xla_flags=False` or `ZOO_XLA_DEFAULTS=0` leaves `XLA_FLAGS` alone, `malloc=False`
    or `ZOO_MALLOC_DEFAULTS=0` leaves malloc alone. Calling it again sets nothing new. See the
    module docstring for what each setting does and where it is not applied.
    """
    flags = _missing_xla_flags() if xla_flags else []
    options = _pending_malloc_options() if malloc else ()
    if not (flags or options):
        return CpuSettings()
    if _backends_initialised():
        warnings.warn(
            "zoo.configure_cpu() was called after JAX started its backend, so it set nothing "
            f"({' '.join(flags)}{'; ' if flags and options else ''}"
            f"{', '.join(name for name, _, _ in options)}); call it before any JAX computation",
            RuntimeWarning,
            stacklevel=2,
        )
        return CpuSettings()
    if flags:
        os.environ["XLA_FLAGS"] = " ".join([*os.environ.get("XLA_FLAGS", "").split(), *flags])
    return CpuSettings(tuple(flags), _apply_malloc(options))


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
    if "jax" not in sys.modules:  # Importing JAX (which `jax_internals` does) starts nothing.
        return False
    from zoo import jax_internals

    return jax_internals.backends_are_initialized()


def _accelerator_plugin_installed() -> bool:
    """A JAX GPU (`jax_plugins.*`) or TPU (`libtpu`) plugin is installed."""
    return any(importlib.util.find_spec(name) is not None for name in ("jax_plugins", "libtpu"))


def _missing_xla_flags() -> list[str]:
    """The zoo's XLA:CPU flags `XLA_FLAGS` lacks, where they apply (module docstring)."""
    version = _jaxlib_version()
    if opted_out(XLA_OPT_OUT_ENV) or not _platform_may_be_cpu() or version is None:
        return []
    if not VERIFIED_JAXLIB[0] <= version <= VERIFIED_JAXLIB[1]:
        return []
    present = {_flag_name(token) for token in os.environ.get("XLA_FLAGS", "").split()}
    return [flag for flag in XLA_CPU_DEFAULTS if _flag_name(flag) not in present]


_applied_malloc: tuple[tuple[str, int], ...] = ()  # set once per process


def _pending_malloc_options() -> tuple[tuple[str, int, int], ...]:
    """`malloc_options` not yet applied in this process, where they apply (module docstring)."""
    if _applied_malloc or opted_out(MALLOC_OPT_OUT_ENV) or not _platform_may_be_cpu():
        return ()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return ()
    if _accelerator_plugin_installed():
        return ()
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return malloc_options(memory)


def _apply_malloc(options: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, int], ...]:
    global _applied_malloc
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied_malloc = tuple(
        (name, value) for name, parameter, value in options if mallopt(parameter, value) == 1
    )
    return _applied_malloc


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

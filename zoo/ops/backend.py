"""Where the zoo's kernels run: the per-backend choice inside a jitted function, the rules
that keep oneDNN out (`portable()`, `ZOO_NATIVE=0`) and each call's share of the cores.

With several devices (`--xla_force_host_platform_device_count`, `jax_num_cpu_devices`, or
`jax.distributed`'s processes) the convolutions run on oneDNN per batch shard
(`zoo.ops.sharding`); batch norm, whose statistics span the whole batch, stays on XLA there.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from zoo.ops import native

# A jax.jit cache key, so switching it re-traces instead of reusing the other kind of trace.
_PORTABLE = jax.make_user_context(default_value=False)


def portable() -> contextlib.AbstractContextManager:
    """A context in which the zoo's kernels trace to XLA's own ops only: no custom calls, so
    `jax.export` takes them. Part of jit's cache key, like a JAX config option: a function
    jitted outside and called again inside is traced again."""
    return _PORTABLE(True)


def tracing_portably() -> bool:
    """Whether `portable()` is on."""
    return _PORTABLE.value


def native_applies() -> bool:
    """Whether a kernel traced now may run on oneDNN (it still needs one for its config)."""
    return not tracing_portably() and native.enabled()


def single_device() -> bool:
    """Whether this computation has one device to itself: no batch split over devices or
    processes, so a kernel over the whole batch (batch norm's statistics) sees all of it."""
    return jax.device_count("cpu") == 1


def team_size() -> int:
    """OpenMP threads per native call: the cores this process may use (at most OMP_NUM_THREADS)
    shared by its CPU devices, whose calls run at the same time."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        cores = min(cores or 1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (cores or 1) // jax.local_device_count("cpu"))


def call_team(team: int, work: float, one_thread_below: float) -> int:
    """The threads of one native call: `team`, or one for a call with less `work` than
    `one_thread_below` (in the caller's unit). On a short call a team's fork and join, and its
    wait for a core that XLA's own threads hold, cost more than the second thread gains
    (bench/README.md, "Intel Xeon with AMX": ResNet-20's bf16 step at batch 8 2.6x slower on
    two threads than on one)."""
    return team if work >= one_thread_below else 1


def threads_for_kernels(
    dtype: Any, threads_for: Callable[[Any], int], kernels_on: Callable[[int], Sequence[Any]]
) -> tuple[int, Sequence[Any]]:
    """(threads, kernels) of an op of `dtype` whose kernels (`kernels_on(threads)`: a dtype per
    kind, None where XLA runs it) may compute in another dtype: its one-thread line is theirs
    (`threads_for(dtype)`). bf16 on a CPU without bf16 kernels runs float32 ones, as long as
    float32's on the same work and reading its float32 widening."""
    threads = threads_for(dtype)
    kernels = kernels_on(threads)
    computed = next((kernel for kernel in kernels if kernel is not None), dtype)
    if (threads_computed := threads_for(computed)) != threads:
        return threads_computed, kernels_on(threads_computed)
    return threads, kernels


# Below this many bytes on a device a memory-bound native pass (batch norm, max pool, the
# residual join) runs on one thread; measured with `zoo.ops.conv.ONE_THREAD_BELOW_MACS`.
ONE_THREAD_BELOW_BYTES = 2**20


def pass_team(x: jax.Array, dtype: Any = None) -> int:
    """The threads of a memory-bound native pass over `x` (all devices' shards together), read
    in `dtype` (by default x's own)."""
    itemsize = jnp.dtype(x.dtype if dtype is None else dtype).itemsize
    per_device = x.size * itemsize / jax.local_device_count("cpu")
    return call_team(team_size(), per_device, ONE_THREAD_BELOW_BYTES)


@functools.cache
def _cpu_is_the_only_backend() -> bool:
    for platform in ("gpu", "tpu"):
        try:
            jax.devices(platform)
        except RuntimeError:  # no such backend in this process
            continue
        return False
    return True


def on_cpu(cpu_fn, default_fn, *operands: jax.Array):
    """`cpu_fn(*operands)` where the computation runs on CPU, `default_fn` on any other backend,
    chosen inside the jitted function (`jax.lax.platform_dependent`).

    A process whose only backend is the CPU lowers for nothing else except under `portable()`
    (`jax.export`), so there `default_fn` is not traced at all: tracing both branches of every
    convolution took ResNet-152's train step 2-3 s.
    """
    if _cpu_is_the_only_backend() and not tracing_portably():
        return cpu_fn(*operands)
    return lax.platform_dependent(*operands, cpu=cpu_fn, default=default_fn)

"""Where the zoo's kernels run, and the glue every op of the extension goes through.

Each op (convolution, batch norm, max pool, residual join) is built the same way:

1. its own plan says, at trace time from shapes and dtypes, whether the extension may run it
   (`native_applies()`: not under `portable()` nor with `ZOO_NATIVE=0`; and a kernel for the
   configuration); where not, the op is its reference, XLA's ops;
2. `native_op(...)`: on CPU the kernels, differentiable to any order (`zoo.ops.autodiff`), on
   any other backend the reference, chosen inside the jitted function (`on_cpu`);
3. each kernel is one `call(...)` of an FFI target, run per device's shard of the batch or on
   the whole batch (`zoo.ops.sharding`), its results typed as its operands are.

Each call runs on an OpenMP team of the process's cores (`team_size`), or on one thread where
it is short (`call_team`). With several devices (`--xla_force_host_platform_device_count`,
`jax_num_cpu_devices`, or `jax.distributed`'s processes) convolutions and residual joins run
per batch shard; batch norm and max pooling, which read the whole batch, stay on XLA there.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops import autodiff, native, sharding

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
    `one_thread_below` (in the caller's unit): on a short call a team's fork and join, and its
    wait for a core that XLA's own threads hold, cost more than the second thread gains
    (bench/README.md, "Threads per call")."""
    return team if work >= one_thread_below else 1


def threads_for_kernels(
    dtype: Any,
    threads_for: Callable[[Any], int],
    kernels_on: Callable[[int], Sequence[Any]],
    computes_in: Callable[[Any], Any] = lambda kernel: kernel,
) -> tuple[int, Sequence[Any]]:
    """(threads, kernels) of an op of `dtype` whose kernels (`kernels_on(threads)`, one per
    kind, None where XLA runs it; `computes_in(kernel)` its dtype, by default the kernel is
    its dtype) may compute in another dtype: its one-thread line is theirs
    (`threads_for(dtype)`). bf16 on a CPU without bf16 kernels runs float32 ones, as long as
    float32's on the same work and reading its float32 widening."""
    threads = threads_for(dtype)
    kernels = kernels_on(threads)
    computed = next((computes_in(k) for k in kernels if k is not None), dtype)
    if (threads_computed := threads_for(computed)) != threads:
        return threads_computed, kernels_on(threads_computed)
    return threads, kernels


# Below this many bytes on a device a memory-bound native pass (batch norm, max pool, the
# residual join) runs on one thread (bench/README.md, "Threads per call").
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
    (`jax.export`), so there `default_fn` is not traced at all, which keeps a deep network's
    trace short.
    """
    if _cpu_is_the_only_backend() and not tracing_portably():
        return cpu_fn(*operands)
    return lax.platform_dependent(*operands, cpu=cpu_fn, default=default_fn)


def native_op(
    name: str,
    reference: Callable[..., tuple[jax.Array, ...]],
    forward: autodiff.Forward,
    cotangent: autodiff.Cotangent,
    *,
    tangent: autodiff.Tangent | None = None,
    bilinear: bool = False,
) -> Callable[..., tuple[jax.Array, ...]]:
    """The op `reference` computes (operands -> a tuple of arrays): where the computation runs
    on CPU, `forward` and `cotangent` on the extension's kernels, differentiable to any order
    in both modes (`zoo.ops.autodiff.differentiable`, which documents the arguments); on any
    other backend `reference` (`on_cpu`). Build it where the op's plan found kernels."""
    op = autodiff.differentiable(
        forward, reference, cotangent=cotangent, tangent=tangent, bilinear=bilinear, name=name
    )
    return lambda *operands: on_cpu(op, reference, *operands)


Batch = Callable[..., Any]  # (kernel, *operands) -> the kernel's results, split over devices


def call(
    target: str,
    results: Any,
    *operands: jax.Array,
    batch: Batch | None = None,
    vmap_method: str = "sequential",
    **attributes: int | float | Sequence[int],
) -> Any:
    """The extension's FFI `target` on `operands`; its results shaped and typed as `results`
    (a `jax.ShapeDtypeStruct`, or a tuple of them: then a tuple; or a function of the operands
    a call gets, returning those), its `attributes` Python ints (int64), floats (float32) or
    sequences of ints. Each result varies over the manual (`shard_map`) axes its operands vary
    over, as a JAX op's would.

    `batch` runs it per device: `sharding.split(...)` on each device's shard of the batch,
    `sharding.whole_batch` on the whole batch on one device; None as it is (the caller splits).
    """
    typed = {key: _attribute(value) for key, value in attributes.items()}

    def kernel(*operands: jax.Array) -> Any:
        shapes = results(*operands) if callable(results) else results
        outputs = jax.ffi.ffi_call(target, shapes, vmap_method=vmap_method)(*operands, **typed)
        return jax.tree.map(lambda output: sharding.vary_like(output, *operands), outputs)

    return kernel(*operands) if batch is None else batch(kernel, *operands)


def _attribute(value: int | float | Sequence[int]) -> np.ndarray | np.generic:
    if isinstance(value, bool | int | np.integer):
        return np.int64(value)
    if isinstance(value, float | np.floating):
        return np.float32(value)
    return np.asarray(value, np.int64)

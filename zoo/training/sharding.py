"""Data parallelism with `jax.sharding`: one mesh axis, 'data', over every process's devices.

The batch is split along 'data' (`P('data')`); parameters, optimizer state and the small data
sets are replicated (`P()`). The jitted step sees global arrays and XLA inserts the gradient
all-reduce, so the same code runs on 1 device, on 8, and on the devices of several processes
(`zoo.distributed`) with the same result up to summation order. Arrays reach the
devices only through `replicate` (host -> every device) and leave a jitted function's batch
dimension only through `constrain_batch`.

With several processes the mesh holds devices this process cannot address: every process runs
the same program on the same replicated values, and `replicate` builds each global array from
the process's own copy (`jax.make_array_from_process_local_data`), since JAX does not copy one
process's arrays to another's devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from zoo.errors import InvalidValueError

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) with axis 'data'.

    Auto axes: shardings are propagated by XLA from the inputs and `constrain_batch`.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises `ValueError` unless `batch_size` splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        lower = batch_size - batch_size % mesh.size
        options = f"{lower} or {lower + mesh.size}" if lower else f"{mesh.size}"
        raise InvalidValueError(
            f"batch size {batch_size} does not divide evenly over {mesh.size} "
            f"devices; use a multiple of {mesh.size}, e.g. {options}"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree of host or device arrays to every device of `mesh`.

    With several processes, each must pass the same values (as every process of a run does:
    same seed, same data, same steps).
    """
    sharding = replicated(mesh)
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: _global_replica(leaf, sharding), tree)


def _global_replica(leaf: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)  # Global already (a jitted result): reshard.
    # A host value or an array on this process's devices: this process's copy of the value.
    return jax.make_array_from_process_local_data(
        sharding, leaf if hasattr(leaf, "shape") else np.asarray(leaf)
    )


def constrain_batch(tree: Any, mesh: Mesh) -> Any:
    """Inside jit: splits the leading (batch) dimension of every leaf over 'data'."""
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))

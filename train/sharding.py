"""Data parallelism with `jax.sharding`: one mesh axis, 'data', over the local devices.

The batch is split along 'data' (`P('data')`); parameters, optimizer state and the small data
sets are replicated (`P()`). The jitted step sees global arrays and XLA inserts the gradient
all-reduce, so the same code runs on 1 device and on 8 with the same result up to summation
order. Arrays reach the devices only through `replicate` (host -> every device) and leave a
jitted function's batch dimension only through `constrain_batch`.

Multi-host (a later issue) changes two things here: the mesh spans `jax.devices()`, and host
batches arrive with `jax.make_array_from_process_local_data(batch_sharding(mesh), local)`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all local devices) with axis 'data'.

    Auto axes: shardings are propagated by XLA from the inputs and `constrain_batch`.
    """
    devices = jax.local_devices() if devices is None else devices
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
        raise ValueError(f"batch size {batch_size} does not divide evenly over {mesh.size} "
                         f"devices; use a multiple of {mesh.size}, e.g. {options}")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree of host or device arrays to every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def constrain_batch(tree: Any, mesh: Mesh) -> Any:
    """Inside jit: splits the leading (batch) dimension of every leaf over 'data'."""
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))

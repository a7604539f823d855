"""Which JAX process this is, and the two collectives that processes saving together need.

A multi-process run (`zoo train` on several hosts, see `zoo.training.distributed`) is one
program run by every process; whatever touches shared files or the terminal is done by one of
them, the primary (`jax.process_index() == 0`), while the others wait at a `barrier` or take
the value it decided (`from_primary`). With a single process, every run but a multi-process
one, these cost nothing: `is_primary()` is True, `barrier` returns at once, `from_primary`
returns its argument.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_primary() -> bool:
    """True in the process that writes shared files and prints: process 0, or the only one."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Returns once every process has reached the barrier `name` (the same in all of them)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def from_primary(value: int) -> int:
    """The primary's `value` in every process; `value` must fit in a signed 32-bit integer.

    (32 bits because JAX, without `jax_enable_x64`, narrows 64-bit integers.)
    """
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))

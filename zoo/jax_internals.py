"""Every JAX name the zoo uses that is neither public API nor in `jax.extend`, in one place.

Each is here because JAX offers no public way to do the same thing:

- `backends_are_initialized` (`jax._src.xla_bridge`): whether XLA has started a backend, after
  which `XLA_FLAGS` is read no more (`zoo.runtime.configure_cpu`). Asking through public API
  (`jax.devices()`) would start one.
- `cluster_environments` (`jax._src.clusters`): the cluster launchers
  `jax.distributed.initialize()` detects, to tell beforehand whether there is a cluster to
  join (`zoo.distributed.detected_cluster`).
- From `jax.interpreters.ad`, `batching` and `mlir`, the rules of a new primitive's
  derivatives, batching and lowering (`zoo.ops.autodiff`): `jax.extend.core.Primitive` makes a
  primitive, but its transpose, JVP, batching and lowering rules are registered only there.

pyproject.toml pins jax to the releases these were tested on; `tests/test_jax_internals.py`
names any that a JAX release has moved, and so does the ImportError raised here.
"""

from __future__ import annotations

import importlib
from typing import Any

TESTED_JAX = ">=0.10.2,<0.11"


def _internal(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        import jax

        raise ImportError(
            f"jax-zoo needs the JAX internal {module}.{name}, which jax {jax.__version__} "
            f"does not have; jax-zoo is tested with jax{TESTED_JAX}"
        ) from error


# (module, name) of each internal, as the tests check them.
INTERNALS = (
    ("jax._src.xla_bridge", "backends_are_initialized"),
    ("jax._src.clusters", "ClusterEnv"),
    ("jax.interpreters.ad", "Zero"),
    ("jax.interpreters.ad", "instantiate_zeros"),
    ("jax.interpreters.ad", "is_undefined_primal"),
    ("jax.interpreters.ad", "primitive_jvps"),
    ("jax.interpreters.ad", "primitive_transposes"),
    ("jax.interpreters.ad", "zeros_like_aval"),
    ("jax.interpreters.batching", "primitive_batchers"),
    ("jax.interpreters.mlir", "lower_fun"),
    ("jax.interpreters.mlir", "register_lowering"),
)

backends_are_initialized = _internal("jax._src.xla_bridge", "backends_are_initialized")
Zero = _internal("jax.interpreters.ad", "Zero")
instantiate_zeros = _internal("jax.interpreters.ad", "instantiate_zeros")
is_undefined_primal = _internal("jax.interpreters.ad", "is_undefined_primal")
primitive_jvps = _internal("jax.interpreters.ad", "primitive_jvps")
primitive_transposes = _internal("jax.interpreters.ad", "primitive_transposes")
zeros_like_aval = _internal("jax.interpreters.ad", "zeros_like_aval")
primitive_batchers = _internal("jax.interpreters.batching", "primitive_batchers")
lower_fun = _internal("jax.interpreters.mlir", "lower_fun")
register_lowering = _internal("jax.interpreters.mlir", "register_lowering")


def cluster_environments() -> list[Any]:
    """The cluster launchers JAX's distributed runtime detects (`ClusterEnv` subclasses)."""
    return list(_internal("jax._src.clusters", "ClusterEnv")._cluster_types)

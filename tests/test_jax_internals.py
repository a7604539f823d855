"""The JAX internals the zoo uses (`zoo/jax_internals.py`) are where it expects them.

A JAX release outside the tested range (pyproject.toml) may move one; this names it.
"""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

from zoo import jax_internals


@pytest.mark.parametrize(("module", "name"), jax_internals.INTERNALS, ids=".".join)
def test_each_internal_is_where_the_zoo_expects_it(module, name):
    version = importlib.metadata.version("jax")
    found = hasattr(importlib.import_module(module), name)
    assert found, f"jax {version} moved {module}.{name} (zoo/jax_internals.py uses it)"


def test_the_cluster_list_is_where_the_zoo_expects_it():
    environments = jax_internals.cluster_environments()
    assert environments and all(hasattr(env, "is_env_present") for env in environments), (
        "jax moved jax._src.clusters.ClusterEnv._cluster_types (zoo.distributed uses it)"
    )


def test_a_moved_internal_is_named_in_the_error():
    with pytest.raises(ImportError, match=r"jax\._src\.xla_bridge\.no_such_name.*tested with"):
        jax_internals._internal("jax._src.xla_bridge", "no_such_name")


def test_pyproject_declares_the_tested_range():
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"jax{jax_internals.TESTED_JAX}"' in pyproject

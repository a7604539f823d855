"""A zoo model rebuilt from its name and config, with the variables it expects (no real init)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.registry import create_model


def expected_variables(model_name: str, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The module and the abstract tree (shapes and dtypes) of its `init` variables.

    Traced with `jax.eval_shape` on one dummy example in inference mode: no parameter is
    computed, so this is cheap even for large models. The dummy has the module's own
    `input_size` and `in_channels` (what `zoo.model_info(...).input_shape` reports for the
    default config), so a config that changes them is traced at the size it was trained at.
    """
    module = create_model(model_name, **config)
    dummy = jax.ShapeDtypeStruct((1, *module.input_size, module.in_channels), jnp.float32)
    init = functools.partial(module.init, train=False)
    return module, jax.eval_shape(init, jax.random.key(0), dummy)

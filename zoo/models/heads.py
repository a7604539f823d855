"""A new classifier on trained variables: fine-tuning a zoo model for another label set.

    module, variables = replace_head("resnet18", loaded.variables, num_classes=10, key=key)

The model's features (what its head reads: `create_model(name, num_classes=0)`) keep their
trained variables; the old head's are dropped and a fresh head, built by the model's own
`head()`, is initialised from `key`. With `num_classes=0` the result is the headless backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.analytic import describe
from zoo.errors import InvalidTypeError
from zoo.models.base import ImageModel
from zoo.registry import create_model


def replace_head(
    model: str | nn.Module, variables: Mapping[str, Any], num_classes: int, key: jax.Array
) -> tuple[nn.Module, dict[str, Any]]:
    """(module, variables) of `model` (a registry name or module) with a new `num_classes` head.

    Every variable but the old head's is kept as it is; the new head's parameters are
    initialised with `key`. Raises `InvalidTypeError` for a model without a classifier head and
    `InvalidValueError` for a bad `num_classes`.
    """
    module = create_model(model) if isinstance(model, str) else model
    if not isinstance(module, ImageModel) or module.head_name is None:
        raise InvalidTypeError(f"{type(module).__name__} has no classifier head to replace")
    new = module.clone(num_classes=num_classes)
    head = module.head_name
    result = {
        collection: {name: tree for name, tree in trees.items() if name != head}
        for collection, trees in variables.items()
    }
    if num_classes:
        # The features' shape, from the formulas: the headless model's last row.
        shape = (*module.input_size, module.in_channels)
        features = describe(module.clone(num_classes=0), shape)[-1].output_shape
        fresh = new.head().init(key, jnp.zeros((1, *features), jnp.float32))
        for collection, tree in fresh.items():
            result.setdefault(collection, {})[head] = tree
    return new, result

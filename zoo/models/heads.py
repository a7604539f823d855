"""A new classifier on trained variables: fine-tuning a zoo model for another label set.

    module, variables = replace_head("resnet18", loaded.variables, num_classes=10, key=key)

The model's features (what its head reads: `create_model(name, num_classes=0)`) keep their
trained variables; the old head's are dropped and a fresh head, built by the model's own
`head()`, is initialised from `key`. With `num_classes=0` the result is the headless backbone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.analytic import describe
from zoo.errors import InvalidTypeError, InvalidValueError, brief
from zoo.models.base import ImageModel
from zoo.registry import create_model


def replace_head(
    model: str | nn.Module, variables: Mapping[str, Any], num_classes: int, key: jax.Array | None
) -> tuple[nn.Module, dict[str, Any]]:
    """(module, variables) of `model` (a registry name or module) with a new `num_classes` head.

    Every variable but the old head's is kept as it is; the new head's parameters are
    initialised with `key` (a PRNG key; unused, and may be None, for `num_classes=0`). Raises
    `InvalidTypeError` for a model without a classifier head, variables that are not a
    collection -> tree mapping, or a `key` that is not a PRNG key, and `InvalidValueError` for a
    bad `num_classes` or variables that are not the model's own (beyond its head).
    """
    module = create_model(model) if isinstance(model, str) else model
    if not isinstance(module, ImageModel) or module.head_name is None:
        raise InvalidTypeError(f"{type(module).__name__} has no classifier head to replace")
    if not isinstance(variables, Mapping) or not all(
        isinstance(trees, Mapping) for trees in variables.values()
    ):
        raise InvalidTypeError(
            f"variables must map collections to trees ({{'params': ...}}), got "
            f"{type(variables).__name__}"
        )
    if num_classes and not _is_key(key):
        raise InvalidTypeError(
            f"key must be a PRNG key such as jax.random.key(0), got {brief(key)}"
        )
    new = module.clone(num_classes=num_classes)
    head = module.head_name
    result = {
        collection: {name: tree for name, tree in trees.items() if name != head}
        for collection, trees in variables.items()
    }
    shape = (*module.input_size, module.in_channels)
    _check_backbone(module.clone(num_classes=0), result, shape)
    if num_classes:
        # The features' shape, from the formulas: the headless model's last row.
        features = describe(module.clone(num_classes=0), shape)[-1].output_shape
        fresh = new.head().init(key, jnp.zeros((1, *features), jnp.float32))
        for collection, tree in fresh.items():
            result.setdefault(collection, {})[head] = tree
    return new, result


def _is_key(key: Any) -> bool:
    """A new-style key (`jax.random.key`) or a raw one (`jax.random.PRNGKey`)."""
    if not isinstance(key, jax.Array | np.ndarray):
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape == ()
    return key.dtype == np.uint32 and key.shape == (2,)


def _check_backbone(
    headless: ImageModel, variables: Mapping[str, Any], shape: tuple[int, int, int]
) -> None:
    """Raises unless `variables` are `headless`'s own, leaf for leaf (paths and shapes)."""
    expected = jax.eval_shape(
        functools.partial(headless.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, *shape), jnp.float32),
    )
    want, have = _shapes(expected), _shapes(variables)
    wrong = [
        f"{path}: {'missing' if path not in have else f'shape {have[path]}, not {want[path]}'}"
        for path in want
        if have.get(path) != want[path]
    ] + [f"{path}: not a variable of the model" for path in have if path not in want]
    if wrong:
        shown = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise InvalidValueError(
            f"the variables are not {type(headless).__name__}'s beyond its head: {shown}"
        )


def _shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(np.shape(leaf))
        for path, leaf in leaves
    }

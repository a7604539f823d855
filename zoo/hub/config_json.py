"""A model's constructor config as JSON, and back to values `create_model` finds equal.

JSON has no tuples and no dtypes, while Flax configs hold both (`stage_sizes=(2, 2, 2, 2)`,
`dtype=jnp.float32`). A dtype is written as {"dtype": "float32"}; on the way back a JSON list
becomes a list only where the registry's default for that field is a list, a tuple everywhere
else. `encode` refuses a config that would not come back equal, so that every checkpoint that
saves also rebuilds its module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidTypeError, InvalidValueError
from zoo.registry import model_info

_DTYPE = "dtype"


def full_config(model_name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor field, defaults included: a checkpoint then does not depend on defaults
    that may change after it was saved."""
    return model_info(model_name).config(**overrides)


def encode(model_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a config; `ValueError` if some field would not come back equal."""
    record = {
        field: _encode(value, f"{model_name} config {field}") for field, value in config.items()
    }
    back = decode(model_name, record)
    changed = [field for field in config if back[field] != config[field]]
    if changed:
        raise InvalidValueError(
            f"{model_name} config does not survive JSON: "
            + ", ".join(
                f"{field}={config[field]!r} would load as {back[field]!r}" for field in changed
            )
        )
    return record


def decode(model_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments from the JSON form, shaped like the registry's defaults."""
    defaults = model_info(model_name).config()
    return {field: _decode(value, defaults.get(field)) for field, value in record.items()}


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    try:
        return {_DTYPE: np.dtype(value).name}
    except TypeError:
        raise InvalidTypeError(
            f"{where} must be a number, string, list, str-keyed dict or dtype, "
            f"got {type(value).__name__} {value!r}"
        ) from None


def _decode(value: Any, default: Any) -> Any:
    if isinstance(value, list):
        items = [_decode(v, _item(default, i)) for i, v in enumerate(value)]
        return items if isinstance(default, list) else tuple(items)
    if isinstance(value, dict) and value.keys() == {_DTYPE}:
        return jnp.dtype(value[_DTYPE])
    if isinstance(value, dict):
        defaults = default if isinstance(default, Mapping) else {}
        return {k: _decode(v, defaults.get(k)) for k, v in value.items()}
    return value


def _item(default: Any, index: int) -> Any:
    return default[index] if isinstance(default, list | tuple) and index < len(default) else None

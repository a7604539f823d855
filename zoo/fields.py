"""A model's config fields checked against their annotations: one rule for every zoo model.

A zoo model's dataclass fields are its whole config, and their annotations say what each takes:
`int` an integer (not a bool, not a string), `float` a number, `bool` true or false, `str` a
string, `tuple[int, ...]` a sequence of integers, `tuple[int, int]` a sequence of exactly two,
`Literal[...]` one of its values, `X | None` either, and `FloatDtype` a floating-point dtype
(`jnp.float32`, `"bfloat16"`, `np.float16`, ...). `conform` checks a value against its
annotation and returns the value the module should hold (a list from JSON or the command line
becomes a tuple, a dtype's name a dtype, a NumPy scalar a Python one), or raises a one-line
`InvalidValueError` naming the field, the value and what it takes (`create_model`'s contract:
a bad value is a `ValueError`). Ranges (a positive width, a rate in [0, 1)) are each model's
own checks (`zoo.models.layers.check_positive`, ...).

Annotations it does not know (`Any`, a callable, a module) are not checked.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidValueError, brief


class _Floating:
    """The metadata of `FloatDtype`."""


FLOATING = _Floating()
# The annotation of a compute or parameter dtype (`dtype`, `param_dtype`): floating point only.
FloatDtype = Annotated[Any, FLOATING]
FLOAT_DTYPES = "a floating-point dtype (float32, bfloat16, float16 or float64)"
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


class _Mismatch(Exception):
    """A value that does not conform; `expected` says what would."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


@functools.cache
def field_hints(module: type) -> dict[str, Any]:
    """Field name -> annotation (with `Annotated` metadata) of a dataclass module's init fields."""
    hints = typing.get_type_hints(module, include_extras=True)
    fields = getattr(module, "__dataclass_fields__", {})
    return {name: hints[name] for name, field in fields.items() if field.init and name in hints}


def conform(owner: str, name: str, value: Any, hint: Any) -> Any:
    """`value` as field `name` of `owner` holds it, or `InvalidValueError` saying what it takes."""
    try:
        return _conform(value, hint)
    except _Mismatch as mismatch:
        raise InvalidValueError(
            f"{owner}: {name}={brief(value)} is not {mismatch.expected}"
        ) from None


def conform_all(owner: str, module: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every value of `values` conformed to `module`'s annotation of its field."""
    hints = field_hints(module)
    return {name: conform(owner, name, value, hints.get(name)) for name, value in values.items()}


def _conform(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _dtype(value) if FLOATING in hint.__metadata__ else _conform(value, args[0])
    if hint in (int, float, bool, str):
        return _scalar(value, hint)
    if origin is Literal:
        if isinstance(value, str | int | float | bool | None) and value in args:
            return value
        raise _Mismatch("one of " + ", ".join(map(repr, args)))
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        expected = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _conform(value, option)
            except _Mismatch as mismatch:
                expected.append(mismatch.expected)
        raise _Mismatch(" or ".join(expected + ["None"] * (type(None) in args)))
    if origin is tuple or origin in (Sequence, typing.Sequence):
        return _sequence(value, args if origin is tuple else (args[0], ...) if args else ())
    return value  # Any, a callable, a class: the model itself knows what it takes.


def _scalar(value: Any, kind: type) -> Any:
    if isinstance(value, np.generic) and not isinstance(value, np.str_):
        value = value.item()  # NumPy scalars as the Python ones.
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and is_number and isinstance(value, int):
        return value
    if kind is float and is_number:
        return value
    if kind is str and isinstance(value, str):
        return value
    raise _Mismatch(
        {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}[kind]
    )


def _sequence(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    variadic = len(args) == 2 and args[1] is Ellipsis
    items = args[:1] if variadic else args
    kinds = {_PLURALS.get(item, "values") for item in items}
    what = kinds.pop() if len(kinds) == 1 else "values"
    expected = (
        f"a sequence of {what}" if variadic or not args else f"a sequence of {len(args)} {what}"
    )
    if not isinstance(value, list | tuple) or (not variadic and args and len(value) != len(args)):
        raise _Mismatch(expected)
    if not args:
        return tuple(value)
    try:
        return tuple(
            _conform(item, args[0] if variadic else args[i]) for i, item in enumerate(value)
        )
    except _Mismatch:
        raise _Mismatch(expected) from None


def _dtype(value: Any) -> Any:
    """A floating dtype: a name becomes the dtype (`"bfloat16"`); a dtype or type stays itself."""
    if isinstance(value, bool | int | float) or value is None:
        raise _Mismatch(FLOAT_DTYPES)  # np.dtype(None) is float64, and 1.0 is a value.
    try:
        dtype = jnp.dtype(value)  # Knows ml_dtypes' names too ("bfloat16").
    except (TypeError, ValueError):
        raise _Mismatch(FLOAT_DTYPES) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise _Mismatch(FLOAT_DTYPES)
    return dtype if isinstance(value, str) else value

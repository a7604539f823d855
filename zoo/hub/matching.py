"""Does a saved tree fit the tree a model (or a training loop) expects, leaf by leaf?

Orbax restores into whatever abstract tree it is given: it casts dtypes without a word and, with
`strict=False`, pads or truncates shapes. So before restoring, the saved structure is compared
with the expected one on keys, shapes and dtypes, and any difference is an error listing the
first mismatching leaves. Leaves are compared by '/'-joined key path, which makes a named tuple
(`mu`, `nu`) and the dict Orbax stores for it, or a tuple and its stored list, the same tree.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from zoo.hub.errors import ArchitectureMismatchError

Spec = tuple[tuple[int, ...], np.dtype]
_SHOWN = 5


def flat_specs(tree: Any) -> dict[str, Spec]:
    """'/'-joined key path -> (shape, dtype) of every leaf (arrays, abstract arrays, scalars)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): _spec(leaf) for path, leaf in leaves}


def mismatches(expected: Any, actual: Any) -> list[str]:
    """One line per leaf that is missing, unexpected, or of another shape or dtype; sorted."""
    want, have = flat_specs(expected), flat_specs(actual)
    lines = [f"{key}: expected {_show(want[key])}, missing" for key in want.keys() - have.keys()]
    lines += [f"{key}: unexpected {_show(have[key])}" for key in have.keys() - want.keys()]
    lines += [
        f"{key}: expected {_show(want[key])}, got {_show(have[key])}"
        for key in want.keys() & have.keys()
        if want[key] != have[key]
    ]
    return sorted(lines)


def check_match(expected: Any, actual: Any, what: str) -> None:
    """Raises `ArchitectureMismatchError` listing the first mismatches of `actual` vs `expected`,
    after `what` (the sentence that says which tree did not fit)."""
    lines = mismatches(expected, actual)
    if lines:
        shown = "\n  ".join(lines[:_SHOWN])
        more = f"\n  ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
        raise ArchitectureMismatchError(
            f"{what}: {len(lines)} array(s) differ in key, shape or dtype:\n  {shown}{more}"
        )


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):  # DictKey/FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _spec(leaf: Any) -> Spec:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        # Orbax stores a typed PRNG key as its raw key data.
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    value = np.asarray(leaf)  # Python scalars: Orbax records int as int64 and float as float64.
    return value.shape, value.dtype


def _show(spec: Spec) -> str:
    shape, dtype = spec
    return f"{dtype}{list(shape)}"

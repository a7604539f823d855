"""The one module that talks to Orbax: write, describe and restore one pytree in one folder, and
check that a saved tree fits the tree a model (or a training loop) expects before restoring it.

Each saved item (the model's variables, the optional training state) is a plain Orbax
`StandardCheckpointHandler` folder, written synchronously. Orbax's `CheckpointManager` is not
used: its step folders become visible once Orbax commits them, before our metadata and sha256
manifest exist, and its retention knows nothing of our "best" metric or of runs. Steps, their
atomic commit and their retention are therefore ours (`zoo.hub.disk`); Orbax only ever sees a
folder inside a private staging directory. Restoring reads with `StandardRestore` (tensorstore
data plus JSON, never pickle), so loading a checkpoint cannot execute code from it.

Orbax restores into whatever abstract tree it is given: it casts dtypes without a word and, with
`strict=False`, pads or truncates shapes. So before restoring, the saved structure is compared
with the expected one on keys, shapes and dtypes (`check_match`), and any difference is an error
listing the first mismatching leaves. Leaves are compared by '/'-joined key path, which makes a
named tuple (`mu`, `nu`) and the dict Orbax stores for it, or a tuple and its stored list, the
same tree.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from zoo.hub.errors import ArchitectureMismatchError
from zoo.registry import create_model

Spec = tuple[tuple[int, ...], np.dtype]
_SHOWN = 5


def save_tree(directory: Path, tree: Any) -> None:
    """Writes a pytree of arrays and scalars into `directory`, which must not exist yet."""
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, args=ocp.args.StandardSave(tree))


def saved_tree(directory: Path) -> Any:
    """The saved tree's structure, with leaves that have `.shape` and `.dtype` (no data read).

    Orbax records containers generically: tuples and lists as lists, named tuples and dataclass
    nodes as dicts keyed by field name, empty nodes as None.
    """
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        return checkpointer.metadata(directory).item_metadata.tree


def restore_tree(directory: Path, abstract_tree: Any) -> Any:
    """Reads `directory` into the structure of `abstract_tree`, as arrays on this process's first
    device (the default device, unless several processes run together).

    Orbax casts to the abstract dtypes and, when asked to be lenient, pads or truncates shapes;
    callers compare `saved_tree` with `abstract_tree` first (`check_match`), so neither
    can happen silently here.
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda leaf: _on_device(leaf, device), abstract_tree)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        return checkpointer.restore(directory, args=ocp.args.StandardRestore(target))


def _on_device(leaf: Any, device: jax.sharding.Sharding) -> Any:
    # Without a sharding, Orbax hands arrays saved from numpy back as numpy; give every array
    # leaf one so the restored tree is uniformly jax arrays. Python scalars stay scalars.
    if not hasattr(leaf, "shape"):
        return leaf
    return jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None) or device
    )


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


def flat_specs(tree: Any) -> dict[str, Spec]:
    """'/'-joined key path -> (shape, dtype) of every leaf (arrays, abstract arrays, scalars)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): _spec(leaf) for path, leaf in leaves
    }


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

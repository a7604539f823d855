"""The one module that talks to Orbax: write, describe and restore one pytree in one folder.

Each saved item (the model's variables, the optional training state) is a plain Orbax
`StandardCheckpointHandler` folder, written synchronously. Orbax's `CheckpointManager` is not
used: its step folders become visible once Orbax commits them, before our metadata and sha256
manifest exist, and its retention knows nothing of our "best" metric. Steps, their atomic commit
and their retention are therefore ours (`zoo.hub.commit`); Orbax only ever sees a folder inside a
private staging directory. Restoring reads with `StandardRestore` (tensorstore data plus JSON,
never pickle), so loading a checkpoint cannot execute code from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


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
    callers compare `saved_tree` with `abstract_tree` first (`zoo.hub.matching`), so neither
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

"""Fine-tuning: a run that starts from a registry entry's weights (`--init-from NAME`).

The entry (shipped, trained, or imported with `zoo import-torchvision`) is loaded and verified
by `zoo.hub.load`, the new model adapts the leaves whose shape follows the input size (a ViT's
position embeddings are resampled to its patch grid, as timm does), and the variables are laid
over the fresh model's, leaf by '/'-joined path:

- a leaf with the same path, shape and dtype is loaded;
- a head leaf, one whose shapes differ only in the last axis, which is the number of classes
  on both sides (1000 -> 10), keeps its fresh initialisation and is reported by name;
- any other difference (a missing or extra leaf, another shape or dtype) is an
  `ArchitectureMismatchError` naming it, before any training.

What is frozen is said apart, by `--train-only` (`zoo.training.state.frozen_paths`). The run's
checkpoints record the source under `meta["init_from"]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import flax.linen as nn
import jax

from zoo import hub
from zoo.hub.store import check_match, flat_specs
from zoo.models.base import ImageModel
from zoo.training.state import PyTree, TrainState, leaf_path


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """What `--init-from` did: the state it starts from, and the record of where from.

    Attributes:
      state: the fresh state with the loaded leaves in place (and its average reset to them).
      source: {"name", "step", "model_name", "created", "manifest_sha256", "reinitialised"},
        for the checkpoints' `meta["init_from"]`.
    """

    state: TrainState
    source: dict[str, Any]

    @property
    def summary(self) -> str:
        """One line for the console."""
        source, new = self.source, self.source["reinitialised"]
        head = f"; re-initialised (new head): {', '.join(new)}" if new else ""
        return (
            f"initialised from {source['name']} step {source['step']} "
            f"({source['model_name']}){head}"
        )


def start_from(
    state: TrainState,
    name: str,
    *,
    num_classes: int | None,
    registry: str | None = None,
    model: nn.Module | None = None,
) -> Initialisation:
    """`state` with the variables of registry entry `name` loaded wherever they fit (see the
    module docstring); `num_classes` is the new model's (None for a model without classes).
    `model`, the state's module, first adapts the entry's variables to its input size where
    a leaf depends on it (`ImageModel.adapt_variables`: a ViT's position embeddings)."""
    loaded = hub.load(name, registry=registry)
    source = jax.device_get(loaded.variables)
    if isinstance(model, ImageModel):
        source = model.adapt_variables(source, loaded.module)
    variables, reinitialised = overlay(
        state.variables,
        source,
        num_classes=num_classes,
        source_classes=getattr(loaded.module, "num_classes", None),
        what=f"{name} ({loaded.model_name})",
    )
    state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    if state.ema:
        state = state.with_average_reset()
    return Initialisation(
        state,
        {
            "name": name,
            "step": loaded.step,
            "model_name": loaded.model_name,
            "created": loaded.meta.get("created"),
            "manifest_sha256": hashlib.sha256(
                (loaded.path / "manifest.json").read_bytes()
            ).hexdigest(),
            "reinitialised": reinitialised,
        },
    )


def overlay(
    fresh: PyTree,
    source: PyTree,
    *,
    num_classes: int | None,
    source_classes: int | None,
    what: str,
) -> tuple[PyTree, list[str]]:
    """`fresh` with `source`'s leaves put in, and the paths of the head leaves left fresh."""
    want, have = flat_specs(fresh), flat_specs(source)
    head = sorted(
        path
        for path in want.keys() & have.keys()
        if _is_head_pair(want[path], have[path], num_classes, source_classes)
    )
    # Everything but the head must match exactly; `check_match` names what does not.
    check_match(
        _without(fresh, head),
        _without(source, head),
        f"{what} does not fit the model beyond its classifier head",
    )
    merged = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if leaf_path(path) in head else _at(source, path), fresh
    )
    return merged, head


def _is_head_pair(
    want: tuple[tuple[int, ...], Any],
    have: tuple[tuple[int, ...], Any],
    num_classes: int | None,
    source_classes: int | None,
) -> bool:
    (new_shape, new_dtype), (old_shape, old_dtype) = want, have
    return (
        num_classes is not None
        and source_classes is not None
        and num_classes != source_classes
        and new_dtype == old_dtype
        and len(new_shape) == len(old_shape) >= 1
        and new_shape[:-1] == old_shape[:-1]
        and (new_shape[-1], old_shape[-1]) == (num_classes, source_classes)
    )


def _at(tree: PyTree, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[getattr(key, "key", key)]
    return tree


def _without(tree: PyTree, paths: list[str]) -> PyTree:
    """`tree` (nested dicts) without the leaves at `paths`."""
    if not paths:
        return tree
    drop = set(paths)

    def keep(node: Any, prefix: str) -> Any:
        if not isinstance(node, dict):
            return node
        kept = {}
        for key, value in node.items():
            full = f"{prefix}{key}"
            if full not in drop:
                kept[key] = keep(value, full + "/")
        return kept

    return keep(tree, "")

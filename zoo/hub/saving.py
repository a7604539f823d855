"""`save`: one training step of a zoo model into the registry, atomically, with its manifest.

In a multi-process run every process calls `save` with its (global) arrays; see `zoo.hub.commit`
for who writes what.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from zoo import multihost
from zoo.hub import config_json, retention, store
from zoo.hub.architecture import expected_variables
from zoo.hub.commit import commit, retire, staging
from zoo.hub.errors import CorruptCheckpointError
from zoo.hub.locks import name_lock
from zoo.hub.manifest import write_manifest
from zoo.hub.matching import check_match
from zoo.hub.paths import (
    TRAIN_STATE,
    VARIABLES,
    check_name,
    check_step,
    committed_steps,
    registry_root,
    step_dir,
)
from zoo.hub.records import CheckpointRecord, jsonable, read_meta, store_meta, write_meta


def save(
    name: str,
    *,
    model_name: str,
    model_config: dict[str, Any],
    variables: dict[str, Any],
    step: int,
    meta: dict[str, Any] | None = None,
    train_state: Any | None = None,
    registry: str | os.PathLike | None = None,
    max_to_keep: int | None = 3,
    best: tuple[str, str] | None = None,
    keep_through: int | None = None,
) -> CheckpointRecord:
    """Saves `variables` of `zoo.create_model(model_name, **model_config)` as `name`, step `step`.

    Args:
      name: the registry name (one folder name, e.g. "lenet5-mnist").
      model_name: the zoo model the variables belong to.
      model_config: the `create_model` overrides; the full config (defaults included) is recorded.
      variables: {'params': ..., maybe 'batch_stats': ...}, jax or numpy arrays; checked against
        the model's own variables (keys, shapes, dtypes) before anything is written.
      step: the training step; saving a step that exists raises `FileExistsError`.
      meta: JSON-able extras: "dataset", "preprocessing" (`Preprocessing.to_dict()`), "metrics"
        ({"val_accuracy": ...}), the training config... The store adds name, model name and
        config, parameter count, step, UTC creation time, library versions and sizes.
      train_state: an optional pytree (optimizer state, rng, ...) saved beside the variables for
        `restore_train_state`.
      registry: the registry folder (see `registry_root`); created if missing.
      max_to_keep: how many of the highest steps to keep; None keeps every step.
      best: (metric, "max" | "min") also keeps the step with the best `meta["metrics"][metric]`.
      keep_through: steps up to this one are out of retention's reach (an earlier run's
        checkpoints, which a new run under the same name must not delete).

    Returns:
      The record of the committed step, as `list_checkpoints` shows it.
    """
    check_name(name)
    check_step(step)
    user_meta = jsonable(meta)
    retention.check_policy(max_to_keep, best, user_meta.get("metrics", {}))
    config = config_json.full_config(model_name, model_config)
    recorded_config = config_json.encode(model_name, config)
    _, expected = expected_variables(model_name, config)
    check_match(expected, variables, f"variables do not fit {model_name} with this config")

    name_dir = registry_root(registry) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    with staging(name_dir, step) as folder:
        # Every process writes its shards of the arrays (Orbax synchronises them)...
        store.save_tree(folder / VARIABLES, variables)
        if train_state is not None:
            store.save_tree(folder / TRAIN_STATE, train_state)
        # ...and the primary alone describes, commits and retires.
        if multihost.is_primary():
            record = _commit_saved(
                folder,
                name_dir,
                step,
                best=best,
                max_to_keep=max_to_keep,
                keep_through=keep_through,
                meta=store_meta(
                    name=name,
                    model_name=model_name,
                    model_config=recorded_config,
                    step=step,
                    params=_count(variables["params"]),
                    size_bytes=_sizes(folder),
                    user_meta=user_meta,
                ),
            )
    # Nobody returns before the step is visible (or the primary has failed, and left).
    multihost.barrier(f"zoo.hub.save {name} step {step}")
    return record if multihost.is_primary() else CheckpointRecord.read(step_dir(name_dir, step))


def _commit_saved(
    folder: Path,
    name_dir: Path,
    step: int,
    *,
    meta: dict[str, Any],
    max_to_keep: int | None,
    best: tuple[str, str] | None,
    keep_through: int | None,
) -> CheckpointRecord:
    """Writes metadata and manifest into the staged `folder`, commits it, applies retention."""
    write_meta(folder, meta)
    write_manifest(folder)  # Last: it covers everything above.
    with name_lock(name_dir):
        path = commit(folder, name_dir, step)
        steps = [s for s in committed_steps(name_dir) if keep_through is None or s > keep_through]
        metric_values = _metric_values(name_dir, steps, best) if best else {}
        retire(
            name_dir,
            retention.steps_to_retire(
                steps,
                max_to_keep=max_to_keep,
                best=best,
                metric_values=metric_values,
                just_saved=step,
            ),
        )
        return CheckpointRecord.read(path)  # Under the lock: no other save retires it first.


def _sizes(folder: Path) -> dict[str, int]:
    """Bytes of each saved item in the staged `folder`."""
    return {
        item: sum(p.stat().st_size for p in (folder / item).rglob("*") if p.is_file())
        for item in (VARIABLES, TRAIN_STATE)
        if (folder / item).is_dir()
    }


def _count(params: Any) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))


def _metric_values(name_dir: Path, steps: list[int], best: tuple[str, str]) -> dict[int, float]:
    """step -> its recorded `best` metric, for the steps that have one."""
    values = {}
    for step in steps:
        try:
            value = read_meta(step_dir(name_dir, step)).get("metrics", {}).get(best[0])
        except CorruptCheckpointError:
            continue  # A damaged step does not compete for best; loading it will say why.
        if retention.competes_for_best(value):
            values[step] = value
    return values

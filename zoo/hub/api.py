"""The registry's public API: save a step by name, find it again, verify it once, restore it.

Where a name is looked up, and where saves go, is `zoo.hub.roots`.
"""

from __future__ import annotations

import contextlib
import difflib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from zoo import distributed
from zoo.hub import disk, manifest, records, store
from zoo.hub.errors import CheckpointNotFoundError, CorruptCheckpointError
from zoo.hub.loaded import LoadedModel
from zoo.hub.records import CheckpointRecord
from zoo.hub.roots import (
    PathLike,
    check_writable,
    listed_registries,
    registries,
    registry_root,
)

# --- saving -------------------------------------------------------------------------------------


def save(
    name: str,
    *,
    model_name: str,
    model_config: dict[str, Any],
    variables: dict[str, Any],
    step: int,
    meta: dict[str, Any] | None = None,
    train_state: Any | None = None,
    registry: PathLike | None = None,
    max_to_keep: int | None = 3,
    best: tuple[str, str] | None = None,
    run_id: str | None = None,
) -> CheckpointRecord:
    """Saves `variables` of `zoo.create_model(model_name, **model_config)` as `name`, step `step`.

    In a multi-process run every process calls `save` with its (global) arrays.

    Args:
      name: the registry name (one folder name, e.g. "lenet5-mnist").
      model_name: the zoo model the variables belong to.
      model_config: the `create_model` overrides; the full config (defaults included) is recorded.
      variables: {'params': ..., maybe 'batch_stats': ...}, jax or numpy arrays; checked against
        the model's own variables (keys, shapes, dtypes) before anything is written.
      step: the training step; saving a step that exists raises `FileExistsError`.
      meta: JSON-able extras: "dataset", "preprocessing" (`Preprocessing.to_dict()`), "metrics"
        ({"val_accuracy": ...}), "class_names" (one string per class, checked against the
        model's `num_classes`), the training config... The store adds name, model name and
        config, parameter count, step, UTC creation time, library versions and sizes.
      train_state: an optional pytree (optimizer state, rng, ...) saved beside the variables for
        `load(..., train_state=...)`.
      registry: the registry folder (see `registry_root`); created if missing.
      max_to_keep: how many of the highest steps of this run to keep; None keeps every step.
      best: (metric, "max" | "min") also keeps the run's step with the best
        `meta["metrics"][metric]`.
      run_id: the training run saving (see `claim_run`); recorded, and retention then prunes
        only this run's steps. Without one, only steps saved without a run id are pruned: a
        run's steps, and those shipped, are never deleted by another run's save.

    Returns:
      The record of the committed step, as `list_checkpoints` shows it.
    """
    disk.check_name(name)
    disk.check_step(step)
    user_meta = records.jsonable(meta)
    disk.check_policy(max_to_keep, best, user_meta.get("metrics", {}))
    config = records.full_config(model_name, model_config)
    recorded_config = records.encode_config(model_name, config)
    if records.CLASS_NAMES in user_meta:
        records.check_class_names(
            user_meta[records.CLASS_NAMES],
            records.class_outputs(model_name, config),
            f"meta of {name!r}",
        )
    _, expected = store.expected_variables(model_name, config)
    store.check_match(expected, variables, f"variables do not fit {model_name} with this config")

    name_dir = check_writable(registry) / name
    name_dir.mkdir(exist_ok=True)
    with disk.staging(name_dir, step) as folder:
        # Every process writes its shards of the arrays (Orbax synchronises them)...
        store.save_tree(folder / disk.VARIABLES, variables)
        if train_state is not None:
            store.save_tree(folder / disk.TRAIN_STATE, train_state)
        # ...and the primary alone describes, commits and retires.
        if distributed.is_primary():
            records.write_meta(
                folder,
                records.store_meta(
                    name=name,
                    model_name=model_name,
                    model_config=recorded_config,
                    step=step,
                    params=sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables["params"])),
                    size_bytes=_sizes(folder),
                    run_id=run_id,
                    user_meta=user_meta,
                ),
            )
            manifest.write_manifest(folder)  # Last: it covers everything above.
            record = _commit(folder, name_dir, step, max_to_keep, best, run_id)
    # Nobody returns before the step is visible (or the primary has failed, and left).
    distributed.barrier(f"zoo.hub.save {name} step {step}")
    if distributed.is_primary():
        return record
    return CheckpointRecord.read(disk.step_dir(name_dir, step))


def _commit(
    folder: Path,
    name_dir: Path,
    step: int,
    max_to_keep: int | None,
    best: tuple[str, str] | None,
    run_id: str | None,
) -> CheckpointRecord:
    """Commits the staged, described `folder` as `step`, then applies retention to the steps
    of the same run."""
    with disk.name_lock(name_dir):
        path = disk.commit(folder, name_dir, step)
        owned = _run_steps(name_dir, run_id)
        disk.retire(
            name_dir,
            disk.steps_to_retire(
                list(owned),
                max_to_keep=max_to_keep,
                best=best,
                metric_values=_metric_values(owned, best) if best else {},
                just_saved=step,
            ),
        )
        return CheckpointRecord.read(path)  # Under the lock: no other save retires it first.


def _run_steps(name_dir: Path, run_id: str | None) -> dict[int, dict[str, Any]]:
    """step -> metadata of the committed steps saved by `run_id` (None: saved without one).

    A damaged step belongs to no run: retention never deletes it, loading it will say why.
    """
    owned = {}
    for step in disk.committed_steps(name_dir):
        try:
            meta = records.read_meta(disk.step_dir(name_dir, step))
        except CorruptCheckpointError:
            continue
        if meta.get(records.RUN_ID) == run_id:
            owned[step] = meta
    return owned


def _sizes(folder: Path) -> dict[str, int]:
    """Bytes of each saved item in the staged `folder`."""
    return {
        item: sum(p.stat().st_size for p in (folder / item).rglob("*") if p.is_file())
        for item in (disk.VARIABLES, disk.TRAIN_STATE)
        if (folder / item).is_dir()
    }


def _metric_values(metas: dict[int, dict[str, Any]], best: tuple[str, str]) -> dict[int, float]:
    """step -> its recorded `best` metric, for the steps that have a rankable one."""
    values = {step: meta.get("metrics", {}).get(best[0]) for step, meta in metas.items()}
    return {step: value for step, value in values.items() if disk.competes_for_best(value)}


@contextlib.contextmanager
def claim_run(name: str, *, registry: PathLike | None = None) -> Iterator[str]:
    """Holds `name` for one training run and yields a fresh run id to `save` with.

    A second run under the same name in the same registry, while this one lives, is refused at
    once with `AlreadyExistsError` (two runs numbering and pruning one name's steps would fight
    over them). The claim dies with its process, so a killed run never blocks the next one.
    In a multi-process run only the primary claims (it alone commits and prunes).
    """
    run_id = secrets.token_hex(8)
    if not distributed.is_primary():
        yield run_id
        return
    with disk.run_claim(check_writable(registry) / disk.check_name(name), run_id):
        yield run_id


# --- reading ------------------------------------------------------------------------------------


def load(
    name: str,
    *,
    step: int | None = None,
    registry: PathLike | None = None,
    train_state: Any | None = None,
) -> LoadedModel:
    """Restores `name` (its latest step, or `step`) as a ready-to-use `LoadedModel`.

    Every file is checked against the step's sha256 manifest first (`CorruptCheckpointError`);
    the module is rebuilt with `zoo.create_model` from the recorded name and config, and the
    saved arrays must match its variables exactly in keys, shapes and dtypes
    (`ArchitectureMismatchError`) — nothing is cast, padded or partially restored.
    Raises `CheckpointNotFoundError` for an unknown name or step.

    `train_state`, an abstract tree (arrays or `jax.ShapeDtypeStruct`s, e.g. a freshly
    initialised state), also restores the training state saved with the step into
    `LoadedModel.train_state`, from the same verified files: what a resume needs, in one read.
    """
    with _verified_step(name, step, registry) as (folder, meta, source):
        config = records.decode_config(meta["model_name"], meta["model_config"])
        module, expected = store.expected_variables(meta["model_name"], config)
        store.check_match(
            expected,
            store.saved_tree(folder / disk.VARIABLES),
            f"{folder} does not fit {meta['model_name']} rebuilt from its recorded config",
        )
        variables = store.restore_tree(folder / disk.VARIABLES, expected)
        restored_state = None if train_state is None else _restore_state(folder, train_state)
    return LoadedModel(
        name=name,
        model_name=meta["model_name"],
        module=module,
        variables=variables,
        meta=meta,
        step=meta["step"],
        path=folder,
        source=source,
        train_state=restored_state,
    )


def read_metadata(
    name: str, *, step: int | None = None, registry: PathLike | None = None
) -> dict[str, Any]:
    """The metadata of `name` (latest step, or `step`) without restoring any weight.

    `meta.json` itself is checked against the step's manifest (no other file is read).
    """
    with _chosen_step(name, step, registry) as (folder, _):
        manifest.verify_file(folder, records.META_FILE)
        return records.read_meta(folder)


def step_folder(name: str, *, step: int | None = None, registry: PathLike | None = None) -> Path:
    """The folder of `name`'s latest step (or `step`), found in lookup order; nothing is read."""
    with _chosen_step(name, step, registry) as (folder, _):
        return folder


def latest_step(name: str, registry: PathLike | None = None) -> int | None:
    """The highest committed step of `name` in the registry saves go to (`registry_root`), or
    None when nothing is saved under it there."""
    return next(
        reversed(disk.committed_steps(registry_root(registry) / disk.check_name(name))), None
    )


def list_checkpoints(registry: PathLike | None = None) -> list[CheckpointRecord]:
    """Every committed step, registry by registry in lookup order, then by name and step.

    Steps still being written (or abandoned by a killed writer) are not listed. Only metadata is
    read (`load` is what verifies every file); a step whose metadata or manifest cannot be read
    is listed with `damaged` saying why, so one bad step hides nothing else.
    """
    found = []
    for root, source in listed_registries(registry):
        for name_dir in disk.name_folders(root):
            try:
                with disk.name_lock(name_dir, shared=True):
                    found += [
                        CheckpointRecord.read(disk.step_dir(name_dir, step), source)
                        for step in disk.committed_steps(name_dir)
                    ]
            except OSError as error:
                found.append(CheckpointRecord.unreadable(name_dir, source, error))
    return found


def _restore_state(folder: Path, abstract_train_state: Any) -> Any:
    if not (folder / disk.TRAIN_STATE).is_dir():
        raise CheckpointNotFoundError(
            f"{folder.parent.name!r} step {records.folder_step(folder)} was saved without a "
            "train_state"
        )
    store.check_match(
        abstract_train_state,
        store.saved_tree(folder / disk.TRAIN_STATE),
        f"{folder / disk.TRAIN_STATE} does not fit the given train state",
    )
    return store.restore_tree(folder / disk.TRAIN_STATE, abstract_train_state)


@contextlib.contextmanager
def _chosen_step(
    name: str, step: int | None, registry: PathLike | None
) -> Iterator[tuple[Path, str]]:
    """The folder and source of `name`'s chosen step, held under the name's shared lock so that
    retention cannot delete it mid-read."""
    disk.check_name(name)
    searched = registries(registry)
    for root, source in searched:
        name_dir = root / name
        with disk.name_lock(name_dir, shared=True):
            steps = disk.committed_steps(name_dir)
            if not steps:
                continue
            chosen = steps[-1] if step is None else disk.check_step(step)
            if chosen not in steps:
                raise CheckpointNotFoundError(
                    f"{name!r} has no step {chosen}; saved steps: "
                    f"{', '.join(map(str, steps))} (in {root})"
                )
            yield disk.step_dir(name_dir, chosen), source
            return
    raise _unknown_name(name, registry, [root for root, _ in searched])


@contextlib.contextmanager
def _verified_step(
    name: str, step: int | None, registry: PathLike | None
) -> Iterator[tuple[Path, dict[str, Any], str]]:
    """Like `_chosen_step`, for a step whose every file matches its manifest, with its metadata."""
    with _chosen_step(name, step, registry) as (folder, source):
        try:
            manifest.verify(folder)
            meta = records.read_meta(folder)
        except CorruptCheckpointError as error:
            if step is not None:
                raise
            raise error.with_hint(_earlier_good_step(name, folder)) from None
        yield folder, meta, source


def _earlier_good_step(name: str, bad: Path) -> str:
    """Advice for a corrupt latest step: the newest earlier step that verifies, if any."""
    name_dir = bad.parent
    for step in reversed(disk.committed_steps(name_dir)[:-1]):
        try:
            manifest.verify(disk.step_dir(name_dir, step))
            records.read_meta(disk.step_dir(name_dir, step))
        except CorruptCheckpointError:
            continue
        return f"the latest good step is {step}: load({name!r}, step={step})"
    return "no earlier step of it verifies either"


def _unknown_name(
    name: str, registry: PathLike | None, roots: list[Path]
) -> CheckpointNotFoundError:
    known = sorted({known for root in roots for known in disk.checkpoint_names(root)})
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = (
        f"did you mean: {', '.join(close)}?"
        if close
        else f"saved names: {', '.join(known) or 'none'}"
    )
    user = registry_root(registry)
    missing = [] if user.is_dir() else [f"{user} (which does not exist yet)"]
    where = " or ".join([*missing, *map(str, roots)])
    return CheckpointNotFoundError(f"no checkpoint named {name!r} in {where}; {hint}")

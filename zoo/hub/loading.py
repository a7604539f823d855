"""`load`, `restore_train_state`, `latest_step`: reading a name back, verified before restored."""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.hub import config_json, manifest, store
from zoo.hub.architecture import expected_variables
from zoo.hub.errors import CheckpointNotFoundError, CorruptCheckpointError
from zoo.hub.loaded import LoadedModel
from zoo.hub.locks import name_lock
from zoo.hub.matching import check_match
from zoo.hub.paths import (
    TRAIN_STATE,
    VARIABLES,
    check_name,
    check_step,
    checkpoint_names,
    committed_steps,
    existing_root,
    registry_root,
    step_dir,
)
from zoo.hub.records import read_meta


def load(
    name: str, *, step: int | None = None, registry: str | os.PathLike | None = None
) -> LoadedModel:
    """Restores `name` (its latest step, or `step`) as a ready-to-use `LoadedModel`.

    Every file is checked against the step's sha256 manifest first (`CorruptCheckpointError`);
    the module is rebuilt with `zoo.create_model` from the recorded name and config, and the
    saved arrays must match its variables exactly in keys, shapes and dtypes
    (`ArchitectureMismatchError`) — nothing is cast, padded or partially restored.
    Raises `CheckpointNotFoundError` for an unknown name or step.
    """
    with _verified_step(name, step, registry) as (folder, meta):
        config = config_json.decode(meta["model_name"], meta["model_config"])
        module, expected = expected_variables(meta["model_name"], config)
        check_match(
            expected,
            store.saved_tree(folder / VARIABLES),
            f"{folder} does not fit {meta['model_name']} rebuilt from its recorded config",
        )
        variables = store.restore_tree(folder / VARIABLES, expected)
    return LoadedModel(
        name=name,
        model_name=meta["model_name"],
        module=module,
        variables=variables,
        meta=meta,
        step=meta["step"],
        path=folder,
    )


def restore_train_state(
    name: str,
    abstract_train_state: Any,
    *,
    step: int | None = None,
    registry: str | os.PathLike | None = None,
) -> Any:
    """The `train_state` saved with `name` (latest step, or `step`), to resume training.

    `abstract_train_state` gives the structure, shapes and dtypes (arrays or
    `jax.ShapeDtypeStruct`s, e.g. a freshly initialised state); the saved tree must match it
    exactly. Raises `CheckpointNotFoundError` if that step was saved without a train state.
    """
    with _verified_step(name, step, registry) as (folder, meta):
        if not (folder / TRAIN_STATE).is_dir():
            raise CheckpointNotFoundError(
                f"{name!r} step {meta['step']} was saved without a train_state"
            )
        check_match(
            abstract_train_state,
            store.saved_tree(folder / TRAIN_STATE),
            f"{folder / TRAIN_STATE} does not fit the given train state",
        )
        return store.restore_tree(folder / TRAIN_STATE, abstract_train_state)


def latest_step(name: str, registry: str | os.PathLike | None = None) -> int | None:
    """The highest committed step of `name`, or None when nothing is saved under it."""
    return next(reversed(committed_steps(registry_root(registry) / check_name(name))), None)


@contextlib.contextmanager
def _verified_step(
    name: str, step: int | None, registry: str | os.PathLike | None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The folder and metadata of a step whose every file matches its manifest, held under the
    name's shared lock so that retention cannot delete it mid-read."""
    root = existing_root(registry)
    name_dir = root / check_name(name)
    with name_lock(name_dir, shared=True):
        steps = committed_steps(name_dir)
        if not steps:
            raise _unknown_name(name, root)
        chosen = steps[-1] if step is None else check_step(step)
        if chosen not in steps:
            raise CheckpointNotFoundError(
                f"{name!r} has no step {chosen}; saved steps: {', '.join(map(str, steps))}"
            )
        folder = step_dir(name_dir, chosen)
        try:
            manifest.verify(folder)
        except CorruptCheckpointError as error:
            if step is not None:
                raise
            raise error.with_hint(_earlier_good_step(name, name_dir, steps[:-1])) from None
        yield folder, read_meta(folder)


def _earlier_good_step(name: str, name_dir: Path, earlier: list[int]) -> str:
    """Advice for a corrupt latest step: the newest earlier step that verifies, if any."""
    for step in reversed(earlier):
        try:
            manifest.verify(step_dir(name_dir, step))
        except CorruptCheckpointError:
            continue
        return f"the latest good step is {step}: load({name!r}, step={step})"
    return "no earlier step of it verifies either"


def _unknown_name(name: str, root: Path) -> CheckpointNotFoundError:
    known = checkpoint_names(root)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = (
        f"did you mean: {', '.join(close)}?"
        if close
        else f"saved names: {', '.join(known) or 'none'}"
    )
    return CheckpointNotFoundError(f"no checkpoint named {name!r} in {root}; {hint}")

"""The JSON metadata of a step, and the one-line `CheckpointRecord` that listing shows of it."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from zoo.errors import InvalidTypeError, InvalidValueError
from zoo.hub import manifest
from zoo.hub.errors import CorruptCheckpointError
from zoo.hub.locks import name_lock
from zoo.hub.paths import checkpoint_names, committed_steps, existing_root, step_dir

META_FILE = "meta.json"
FORMAT = "jax-zoo-checkpoint/1"
# Keys the store writes itself; a caller's `meta` may not set them.
STORE_KEYS = (
    "format",
    "name",
    "model_name",
    "model_config",
    "step",
    "params",
    "created",
    "versions",
    "size_bytes",
)
_PACKAGES = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax": "orbax-checkpoint"}


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One saved step, as `list_checkpoints` and `save` report it.

    Attributes:
      name: the registry name.
      model_name: the zoo model it rebuilds with `zoo.create_model`.
      step: the training step.
      dataset: `meta["dataset"]`, if the saver recorded one.
      metrics: `meta["metrics"]` ({} if none).
      params: trainable parameters (the `params` collection).
      size_bytes: all files the step's manifest lists.
      created: UTC ISO-8601 time of the save.
      path: the step folder.
    """

    name: str
    model_name: str
    step: int
    dataset: str | None
    metrics: dict[str, Any]
    params: int
    size_bytes: int
    created: str
    path: Path

    @classmethod
    def read(cls, folder: Path) -> CheckpointRecord:
        """The record of a committed step folder (reads metadata; verifies nothing)."""
        meta = read_meta(folder)
        return cls(
            name=meta["name"],
            model_name=meta["model_name"],
            step=meta["step"],
            dataset=meta.get("dataset"),
            metrics=meta.get("metrics", {}),
            params=meta["params"],
            size_bytes=manifest.total_size(manifest.read_manifest(folder)),
            created=meta["created"],
            path=folder,
        )


def list_checkpoints(registry: str | os.PathLike | None = None) -> list[CheckpointRecord]:
    """Every committed step in the registry, sorted by name then step.

    Steps still being written (or abandoned by a killed writer) are not listed. Only metadata is
    read; `load` is what verifies every file.
    """
    root = existing_root(registry)
    records = []
    for name in checkpoint_names(root):
        with name_lock(root / name, shared=True):
            records += [
                CheckpointRecord.read(step_dir(root / name, s))
                for s in committed_steps(root / name)
            ]
    return records


def jsonable(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's metadata as it will read back from JSON; numpy and jax scalars become numbers.

    Raises `ValueError` for keys the store writes itself and `TypeError` for values JSON cannot
    hold.
    """
    meta = dict(meta or {})
    taken = sorted(set(meta) & set(STORE_KEYS))
    if taken:
        raise InvalidValueError(
            f"meta key(s) {', '.join(taken)} are written by the store; rename them"
        )
    try:
        return json.loads(json.dumps(meta, default=_scalar))
    except TypeError as error:
        raise InvalidTypeError(f"meta must be JSON-able: {error}") from None


def store_meta(
    *,
    name: str,
    model_name: str,
    model_config: dict[str, Any],
    step: int,
    params: int,
    size_bytes: dict[str, int],
    user_meta: dict[str, Any],
) -> dict[str, Any]:
    """The full metadata of a step: what the store knows, then the caller's own keys."""
    versions = {label: importlib.metadata.version(dist) for label, dist in _PACKAGES.items()}
    versions["python"] = platform.python_version()
    return {
        "format": FORMAT,
        "name": name,
        "model_name": model_name,
        "model_config": model_config,
        "step": step,
        "params": params,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "size_bytes": size_bytes,
        **user_meta,
    }


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def read_meta(folder: Path) -> dict[str, Any]:
    """A step's metadata; `CorruptCheckpointError` if it is missing or not a metadata record."""
    path = folder / META_FILE
    meta = manifest.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpointError(path, f"not a {FORMAT} metadata record")
    return meta


def _scalar(value: Any) -> Any:
    # Metrics often arrive as numpy or jax 0-d values; anything else is a caller error.
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    raise InvalidTypeError(f"{type(value).__name__} {value!r} is not JSON-able")

"""What a step says about itself: its `meta.json`, the model config inside it, and the one-line
`CheckpointRecord` that listing shows of it.

A model's constructor config is stored as JSON, which has no tuples and no dtypes while Flax
configs hold both (`stage_sizes=(2, 2, 2, 2)`, `dtype=jnp.float32`). A dtype is written as
{"dtype": "float32"}; on the way back a JSON list becomes a list only where the registry's
default for that field is a list, a tuple everywhere else. `encode_config` refuses a config that
would not come back equal, so that every checkpoint that saves also rebuilds its module.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidTypeError, InvalidValueError
from zoo.hub import manifest
from zoo.hub.errors import CorruptCheckpointError
from zoo.registry import model_info

META_FILE = "meta.json"
FORMAT = "jax-zoo-checkpoint/1"
# Keys the store writes itself, with the JSON type each must have; a caller's `meta` may not
# set them.
STORE_KEYS = {
    "format": str,
    "name": str,
    "model_name": str,
    "model_config": dict,
    "step": int,
    "params": int,
    "created": str,
    "versions": dict,
    "size_bytes": dict,
}
# Written by the store when a training run saves: the run that owns the step (`zoo.hub.save`).
RUN_ID = "run_id"
# A caller's key with a contract: `meta["class_names"][i]` names output i of a classifier. A step
# without it (saved before names were recorded, or from data without names) names its classes
# by their ids, "0", "1", ... (`LoadedModel.class_names`).
CLASS_NAMES = "class_names"
# Where an entry was found: the read-only models that ship inside the package, or the user's own.
SHIPPED, USER = "shipped", "user"
_PACKAGES = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax": "orbax-checkpoint"}
_DTYPE = "dtype"


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One saved step, as `list_checkpoints` and `save` report it.

    A damaged step is listed too, with `damaged` saying why and only what its folder tells
    (name, step, path, source); its other fields are None (`metrics` {}).

    Attributes:
      name: the registry name.
      model_name: the zoo model it rebuilds with `zoo.create_model`.
      step: the training step (None only for a name folder that cannot be read).
      dataset: `meta["dataset"]`, if the saver recorded one.
      metrics: `meta["metrics"]` ({} if none).
      params: trainable parameters (the `params` collection).
      size_bytes: all files the step's manifest lists.
      created: UTC ISO-8601 time of the save.
      path: the step folder.
      source: "shipped" (inside the package, read-only) or "user" (a registry of one's own).
      damaged: None for a readable step, else what is wrong with it.
    """

    name: str
    model_name: str | None
    step: int | None
    dataset: str | None
    metrics: dict[str, Any]
    params: int | None
    size_bytes: int | None
    created: str | None
    path: Path
    source: str = USER
    damaged: str | None = None

    @classmethod
    def read(cls, folder: Path, source: str = USER) -> CheckpointRecord:
        """The record of a committed step folder (reads metadata and manifest; verifies no data).

        A step whose metadata or manifest cannot be read comes back with `damaged` set.
        """
        try:
            meta = read_meta(folder)
            size = manifest.total_size(manifest.read_manifest(folder))
        except CorruptCheckpointError as error:
            return cls._damaged(folder.parent.name, folder_step(folder), folder, source, str(error))
        return cls(
            name=folder.parent.name,
            model_name=meta["model_name"],
            step=meta["step"],
            dataset=meta.get("dataset"),
            metrics=meta.get("metrics", {}),
            params=meta["params"],
            size_bytes=size,
            created=meta["created"],
            path=folder,
            source=source,
        )

    @classmethod
    def unreadable(cls, name_dir: Path, source: str, error: OSError) -> CheckpointRecord:
        """The record of a name folder whose steps cannot even be listed (`step` is None)."""
        reason = f"its folder {name_dir} is unreadable ({error.strerror})"
        return cls._damaged(name_dir.name, None, name_dir, source, reason)

    @classmethod
    def _damaged(
        cls, name: str, step: int | None, path: Path, source: str, reason: str
    ) -> CheckpointRecord:
        return cls(
            name=name,
            model_name=None,
            step=step,
            dataset=None,
            metrics={},
            params=None,
            size_bytes=None,
            created=None,
            path=path,
            source=source,
            damaged=reason,
        )


# --- meta.json ----------------------------------------------------------------------------------


def jsonable(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's metadata as it will read back from JSON; numpy and jax scalars become numbers.

    Raises `ValueError` for keys the store writes itself and `TypeError` for values JSON cannot
    hold.
    """
    meta = dict(meta or {})
    taken = sorted(set(meta) & {*STORE_KEYS, RUN_ID})
    if taken:
        raise InvalidValueError(
            f"meta key(s) {', '.join(taken)} are written by the store; rename them"
        )
    try:
        return json.loads(json.dumps(meta, default=_scalar))
    except TypeError as error:
        raise InvalidTypeError(f"meta must be JSON-able: {error}") from None


def class_outputs(model_name: str, config: Mapping[str, Any]) -> int:
    """How many classes a model of `config` scores: its `num_classes` for a classifier (0 for a
    headless one), 0 for a model with another task (an autoencoder)."""
    if model_info(model_name).task != "classification":
        return 0
    return int(config.get("num_classes") or 0)


def check_class_names(names: Any, num_classes: int, where: str) -> tuple[str, ...]:
    """`names` as a tuple, if it is one string per output of a `num_classes`-way classifier
    (0: a model without class outputs); else a one-line error naming `where` they come from."""
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise InvalidTypeError(f"{where}: class names must be a list of strings, got {names!r}")
    if not num_classes:
        raise InvalidValueError(f"{where}: class names given for a model without class outputs")
    if len(names) != num_classes:
        raise InvalidValueError(
            f"{where}: {len(names)} class names for a model of {num_classes} classes"
        )
    return tuple(names)


def store_meta(
    *,
    name: str,
    model_name: str,
    model_config: dict[str, Any],
    step: int,
    params: int,
    size_bytes: dict[str, int],
    run_id: str | None,
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
        **({} if run_id is None else {RUN_ID: run_id}),
        **user_meta,
    }


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def read_meta(folder: Path) -> dict[str, Any]:
    """A step's metadata; `CorruptCheckpointError` if it is missing, not a metadata record, or
    records another step than its folder's name says (a renamed or copied step)."""
    path = folder / META_FILE
    meta = manifest.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpointError(path, f"not a {FORMAT} metadata record")
    wrong = [key for key, kind in STORE_KEYS.items() if not isinstance(meta.get(key), kind)]
    if wrong:
        raise CorruptCheckpointError(path, f"lacks a valid {', '.join(wrong)}")
    named = folder_step(folder)
    if meta["step"] != named:
        raise CorruptCheckpointError(
            path,
            f"records step {meta['step']} but its folder is named {folder.name} (step {named}); "
            "a step folder must not be renamed or copied under another number",
        )
    return meta


def folder_step(folder: Path) -> int:
    """The step number in a `step_<N>` folder's name."""
    return int(folder.name.removeprefix("step_"))


def _scalar(value: Any) -> Any:
    # Metrics often arrive as numpy or jax 0-d values; anything else is a caller error.
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    raise InvalidTypeError(f"{type(value).__name__} {value!r} is not JSON-able")


# --- the model config ---------------------------------------------------------------------------


def full_config(model_name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor field, defaults included: a checkpoint then does not depend on defaults
    that may change after it was saved."""
    return model_info(model_name).config(**overrides)


def encode_config(model_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a config; `ValueError` if some field would not come back equal."""
    record = {
        field: _encode(value, f"{model_name} config {field}") for field, value in config.items()
    }
    back = decode_config(model_name, record)
    changed = [field for field in config if back[field] != config[field]]
    if changed:
        raise InvalidValueError(
            f"{model_name} config does not survive JSON: "
            + ", ".join(
                f"{field}={config[field]!r} would load as {back[field]!r}" for field in changed
            )
        )
    return record


def decode_config(model_name: str, record: Mapping[str, Any]) -> dict[str, Any]:
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

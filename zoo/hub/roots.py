"""Where registries are, in the order a name is looked up, and which of them may be written.

A name is looked up first in the user's registry: the `registry` argument (`--registry DIR`)
where one is given, else `registry_root()`'s default ($ZOO_REGISTRY, else
$XDG_DATA_HOME/jax-zoo/registry); then in the models shipped inside the package
(`shipped_root`, read-only, always readable). It is taken whole from the first registry that
holds it. The user's registry goes first so that a run of one's own is what its name loads,
even under a shipped name (the default name of `zoo train lenet5` is the shipped
`lenet5-mnist5k`); every record and loaded model says which registry it came from, and
`load(name, registry=shipped_root())` reaches the shipped one alone. Listing a registry given
by name lists that registry (`listed_registries`). Saves only ever go to the user's registry,
never to the shipped one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import zoo
from zoo import files
from zoo.errors import NotAFolderError, NotFoundError, NotWritableError
from zoo.hub import disk
from zoo.hub.manifest import MANIFEST_FILE
from zoo.hub.records import SHIPPED, USER

REGISTRY_ENV = "ZOO_REGISTRY"
HOW_TO_SET = f"pass --registry DIR or set {REGISTRY_ENV}"
# The user's registry without $ZOO_REGISTRY: per-user data, outside the package and any checkout.
DEFAULT_REGISTRY = ("jax-zoo", "registry")

PathLike = str | os.PathLike


def registry_root(registry: PathLike | None = None) -> Path:
    """The registry folder saves go to: `registry` if given, else $ZOO_REGISTRY, else
    $XDG_DATA_HOME/jax-zoo/registry (~/.local/share/jax-zoo/registry without $XDG_DATA_HOME).

    The folder need not exist yet (saving creates it), but a file at that path raises
    `NotADirectoryError`.
    """
    if registry is not None:
        root = Path(registry)
    elif os.environ.get(REGISTRY_ENV):
        root = Path(os.environ[REGISTRY_ENV])
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        root = Path(data_home, *DEFAULT_REGISTRY)
    # Absolute: Orbax refuses relative paths, and a later chdir must not move the registry.
    root = root.expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise NotAFolderError(f"checkpoint registry {root} is a file, not a folder; {HOW_TO_SET}")
    return root


def shipped_root() -> Path:
    """The read-only pretrained models: `zoo/checkpoints/` inside an installed package (mapped
    from the repository's `checkpoints/` at build time), or that `checkpoints/` itself when zoo
    runs from a source checkout."""
    package = Path(zoo.__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "checkpoints"


def registries(registry: PathLike | None = None) -> list[tuple[Path, str]]:
    """(root, source) of the registries a name is looked up in, in order (see the module
    docstring): the user's, where it exists, then the shipped one."""
    found = dict.fromkeys(
        root for root in (registry_root(registry), shipped_root()) if root.is_dir()
    )
    return [(root, _source(root)) for root in found]


def listed_registries(registry: PathLike | None = None) -> list[tuple[Path, str]]:
    """(root, source) of the registries a listing shows: `registry` alone where one is given
    (`NotFoundError` where it does not exist), else every registry of `registries()`."""
    if registry is None:
        return registries()
    root = registry_root(registry)
    if not root.is_dir():
        raise NotFoundError(
            f"checkpoint registry {root} does not exist (nothing saved there yet?); {HOW_TO_SET}"
        )
    return [(root, _source(root))]


def check_writable(registry: PathLike | None = None) -> Path:
    """The registry saves would go to, created if missing, after proving a file can be written
    there (`zoo.files.check_writable`; the shipped registry is never writable)."""
    root = registry_root(registry)
    if _source(root) == SHIPPED:
        raise NotWritableError(
            f"{root} holds the shipped models, which are read-only; save to a registry of "
            f"your own ({HOW_TO_SET}; default {registry_root()})"
        )
    files.check_writable(root, "checkpoint registry", HOW_TO_SET)
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_outside_registries(
    path: PathLike, what: str, *, registry: PathLike | None = None
) -> Path:
    """`path`, resolved (symlinks and '..' followed), unless a file written there would land in
    a checkpoint registry: then `NotWritableError` naming `what` (e.g. "--out").

    Every file the zoo writes other than a checkpoint (an export, a picture, the metrics log, its
    TensorBoard folder) goes through this one rule, so that nothing ever overwrites or adds to a
    saved step. A registry is the user's (`registry_root()`), the shipped one, `registry` (the
    command's `--registry`), or any folder that holds a registry name's lock file or a step's
    manifest, wherever it is.
    """
    resolved = Path(path).expanduser().resolve()
    roots = [shipped_root()]
    for given in [None] + ([registry] if registry is not None else []):
        with contextlib.suppress(NotAFolderError):  # A file there holds no checkpoint.
            roots.append(registry_root(given))
    for root in roots:
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            raise NotWritableError(
                f"{what} {path}: it is inside the checkpoint registry {root}, where the zoo "
                "writes checkpoints only; choose a path outside it"
            )
    for folder in [resolved, *resolved.parents]:
        if _is_registry_part(folder, holds_target=folder == resolved.parent):
            raise NotWritableError(
                f"{what} {path}: it is inside {folder}, a checkpoint registry's folder, where "
                "the zoo writes checkpoints only; choose a path outside it"
            )
    return resolved


def _is_registry_part(folder: Path, *, holds_target: bool) -> bool:
    """A committed step (its manifest) or a registry name's folder (committed steps in it; only
    looked for in the target's own folder and in folders with a name's lock file, to keep the
    walk up from the target cheap); an unreadable folder is neither."""
    try:
        if disk.is_step_name(folder.name) and (folder / MANIFEST_FILE).is_file():
            return True
        locked = (folder / disk.LOCK_FILE).is_file() or (folder / disk.RUN_FILE).is_file()
        return (holds_target or locked) and bool(disk.committed_steps(folder))
    except OSError:
        return False


def _source(root: Path) -> str:
    return SHIPPED if root.resolve() == shipped_root().resolve() else USER

"""Where checkpoints live: the registry root, one folder per name, one folder per step.

    <root>/<name>/.lock                   flock: commit and retention exclusive, reads shared
    <root>/<name>/step_<N>/               a committed step (`zoo.hub.commit` makes it appear)
    <root>/<name>/step_<N>/variables/     the model's variables, an Orbax tree
    <root>/<name>/step_<N>/train_state/   the optional training state, an Orbax tree
    <root>/<name>/.staging-*/             a step being written, or a killed writer's leftover
    <root>/<name>/.retired-*/             a step being deleted by retention

Only `step_<N>` folders are checkpoints; everything hidden is invisible to listing and loading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import zoo
from zoo.errors import InvalidValueError, NotAFolderError, NotFoundError

REGISTRY_ENV = "ZOO_REGISTRY"
HOW_TO_SET = f"pass --registry DIR or set {REGISTRY_ENV}"
VARIABLES = "variables"
TRAIN_STATE = "train_state"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STEP_DIR = re.compile(r"step_(0|[1-9][0-9]*)")


def registry_root(registry: str | os.PathLike | None = None) -> Path:
    """The registry folder: `registry` if given, else $ZOO_REGISTRY, else the default.

    The default is the source checkout's own `checkpoints/` folder (beside `pyproject.toml`), or
    `./checkpoints` when zoo is installed as a package. The folder need not exist yet (saving
    creates it), but a file at that path raises `NotADirectoryError`.
    """
    if registry is not None:
        root = Path(registry)
    elif os.environ.get(REGISTRY_ENV):
        root = Path(os.environ[REGISTRY_ENV])
    else:
        checkout = Path(zoo.__file__).resolve().parents[1]
        is_source = (checkout / "pyproject.toml").is_file()
        root = (checkout if is_source else Path.cwd()) / "checkpoints"
    # Absolute: Orbax refuses relative paths, and a later chdir must not move the registry.
    root = root.expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise NotAFolderError(f"checkpoint registry {root} is a file, not a folder; {HOW_TO_SET}")
    return root


def existing_root(registry: str | os.PathLike | None = None) -> Path:
    """`registry_root`, which must exist: reading from a registry that is not there is an error."""
    root = registry_root(registry)
    if not root.is_dir():
        raise NotFoundError(
            f"checkpoint registry {root} does not exist (nothing saved there yet?); {HOW_TO_SET}"
        )
    return root


def check_name(name: str) -> str:
    """A registry name is one folder name: letters, digits, '.', '_', '-', not starting hidden."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidValueError(
            f"checkpoint name must match {_NAME.pattern} (one folder name), got {name!r}"
        )
    return name


def check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidValueError(f"step must be a non-negative int, got {step!r}")
    return step


def step_dir(name_dir: Path, step: int) -> Path:
    return name_dir / f"step_{step}"


def committed_steps(name_dir: Path) -> list[int]:
    """The steps under a name folder, ascending; [] when the folder does not exist."""
    if not name_dir.is_dir():
        return []
    matches = (_STEP_DIR.fullmatch(entry.name) for entry in name_dir.iterdir() if entry.is_dir())
    return sorted(int(m.group(1)) for m in matches if m)


def checkpoint_names(root: Path) -> list[str]:
    """The names under the registry root that hold at least one committed step, sorted."""
    return sorted(
        entry.name
        for entry in root.iterdir()
        if _NAME.fullmatch(entry.name) and committed_steps(entry)
    )

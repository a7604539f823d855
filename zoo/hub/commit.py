"""How a step appears and disappears atomically, whatever kills the process in between.

A save writes into a hidden staging folder, `.staging-step_<N>-<random>`, and the step becomes
visible through a single `os.rename` to `step_<N>`, made only after its data, metadata and
manifest are fsynced. A process killed at any moment therefore leaves either no `step_<N>` at all
or a complete one, and no save ever writes into a committed step. Retention works the other way
round: a step is first renamed out of sight (`.retired-...`), then deleted.

Who may clean up what: the staging folder is flock-claimed by its writer for the writer's
lifetime, so a later save deletes exactly the staging folders whose writer is gone; retired
folders are only ever made under the name's exclusive lock and deleted right away, so one that is
still there was left by a killed process.

Several JAX processes saving one step together (a multi-process training run) share one staging
folder: the primary (`jax.process_index() == 0`) makes and claims it and tells the others its
name; every process writes its shards of the arrays into it; then the primary alone writes the
metadata and manifest and makes the rename (`zoo.hub.saving`). A dead primary leaves its claim
behind with its staging folder, so that folder is deleted by the next save like any other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from zoo import multihost
from zoo.errors import AlreadyExistsError
from zoo.hub.locks import claim, is_abandoned, name_lock
from zoo.hub.manifest import fsync_dir
from zoo.hub.paths import step_dir

STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"


@contextlib.contextmanager
def staging(name_dir: Path, step: int) -> Iterator[Path]:
    """A fresh staging folder for `step`, claimed by the primary process; deleted on exit unless
    the step was committed from it. Cleans up what killed writers left behind first.

    Every process of a multi-process run must enter it (the others get the primary's folder).
    """
    if not multihost.is_primary():
        token = multihost.from_primary(_FAILED)
        if token == _FAILED:
            raise RuntimeError(
                f"the primary process could not stage step {step} in {name_dir}; its error says why"
            )
        yield _staging_folder(name_dir, step, token)
        return
    token = _FAILED
    try:
        with name_lock(name_dir):
            remove_leftovers(name_dir)
            refuse_existing(name_dir, step)
            token = secrets.randbelow(_TOKENS) + 1
            folder = _staging_folder(name_dir, step, token)
            folder.mkdir()
            claim_fd = claim(folder)
    finally:  # Even on failure: the other processes wait for word.
        multihost.from_primary(token)
    try:
        yield folder
    finally:
        if folder.exists():
            shutil.rmtree(folder)
        os.close(claim_fd)


# A staging folder's random part: a positive 31-bit token (what `from_primary` carries), 0 when
# the primary failed to make one.
_TOKENS = 2**31 - 1
_FAILED = 0


def _staging_folder(name_dir: Path, step: int, token: int) -> Path:
    return name_dir / f"{STAGING_PREFIX}step_{step}-{token:08x}"


def commit(folder: Path, name_dir: Path, step: int) -> Path:
    """Makes the staged `folder` the step `step`. Call under the name's exclusive lock."""
    refuse_existing(name_dir, step)
    final = step_dir(name_dir, step)
    os.rename(folder, final)
    fsync_dir(name_dir)
    return final


def retire(name_dir: Path, steps: Iterable[int]) -> None:
    """Deletes steps: out of sight in one rename each, then off the disk. Call under the lock."""
    for step in steps:
        hidden = name_dir / f"{RETIRED_PREFIX}step_{step}-{secrets.token_hex(4)}"
        os.rename(step_dir(name_dir, step), hidden)
        shutil.rmtree(hidden)


def remove_leftovers(name_dir: Path) -> None:
    """Deletes staging folders of dead writers and half-deleted retired steps. Call under lock."""
    for entry in name_dir.iterdir():
        if entry.name.startswith(RETIRED_PREFIX) or (
            entry.name.startswith(STAGING_PREFIX) and is_abandoned(entry)
        ):
            shutil.rmtree(entry)


def refuse_existing(name_dir: Path, step: int) -> None:
    """Steps are immutable: saving onto one that exists is an error, never an overwrite."""
    existing = step_dir(name_dir, step)
    if existing.exists():
        raise AlreadyExistsError(
            f"step {step} already exists at {existing}; steps are never "
            "overwritten: save under another step or delete that folder"
        )

"""The on-disk transaction: where steps live, how one appears and disappears atomically, who
may write a name, and which steps a save keeps.

    <root>/<name>/.lock                   flock: commit and retention exclusive, reads shared
    <root>/<name>/.run                    flock: held by the one live training run of the name
    <root>/<name>/step_<N>/               a committed step
    <root>/<name>/step_<N>/variables/     the model's variables, an Orbax tree
    <root>/<name>/step_<N>/train_state/   the optional training state, an Orbax tree
    <root>/<name>/step_<N>/meta.json      its metadata (`zoo.hub.records`)
    <root>/<name>/step_<N>/manifest.json  sha256 of every file above, written last
    <root>/<name>/.staging-*/             a step being written, or a killed writer's leftover
    <root>/<name>/.retired-*/             a step being deleted by retention

Only `step_<N>` folders are checkpoints; everything hidden is invisible to listing and loading.

A save writes into a hidden staging folder and the step becomes visible through one `os.rename`
to `step_<N>`, made only after its data, metadata and manifest are fsynced: a process killed at
any moment leaves either no `step_<N>` or a complete one, and no save writes into a committed
step. Retention works the other way round: a step is renamed out of sight, then deleted.

Every lock is an `fcntl.flock`, which belongs to an open file and dies with its process: a
SIGKILLed writer never leaves a stale lock. The same property tells abandoned staging folders
(flock-claimed by their writer for its lifetime) apart from live ones, so a later save deletes
exactly those whose writer is gone.

Several JAX processes saving one step together share one staging folder: the primary
(`jax.process_index() == 0`) makes and claims it and tells the others its name; every process
writes its shards into it; the primary alone writes metadata and manifest and renames.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo import distributed
from zoo.errors import AlreadyExistsError, InvalidValueError

VARIABLES = "variables"
TRAIN_STATE = "train_state"
LOCK_FILE = ".lock"
RUN_FILE = ".run"
STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"
BEST_MODES = ("max", "min")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STEP_DIR = re.compile(r"step_(0|[1-9][0-9]*)")
# A staging folder's random part: a positive 31-bit token (what `from_primary` carries), 0 when
# the primary failed to make one.
_TOKENS = 2**31 - 1
_FAILED = 0


# --- names and steps ----------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A registry name is one folder name: letters, digits, '.', '_', '-', not starting hidden."""
    if isinstance(name, str) and not name:
        raise InvalidValueError("checkpoint name is empty; give a name such as 'lenet5-mnist'")
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


def is_step_name(name: str) -> bool:
    """Whether `name` is a committed step's folder name, `step_<N>`."""
    return _STEP_DIR.fullmatch(name) is not None


def committed_steps(name_dir: Path) -> list[int]:
    """The steps under a name folder, ascending; [] when the folder does not exist."""
    if not name_dir.is_dir():
        return []
    matches = (_STEP_DIR.fullmatch(entry.name) for entry in name_dir.iterdir() if entry.is_dir())
    return sorted(int(m.group(1)) for m in matches if m)


def name_folders(root: Path) -> list[Path]:
    """The folders under the registry root named like a checkpoint name, sorted by name."""
    return sorted(
        entry for entry in root.iterdir() if _NAME.fullmatch(entry.name) and entry.is_dir()
    )


def checkpoint_names(root: Path) -> list[str]:
    """The names under the registry root that hold at least one readable committed step."""
    names = []
    for folder in name_folders(root):
        with contextlib.suppress(OSError):  # An unreadable folder: listing reports it.
            if committed_steps(folder):
                names.append(folder.name)
    return names


# --- locks --------------------------------------------------------------------------------------


@contextlib.contextmanager
def name_lock(name_dir: Path, *, shared: bool = False) -> Iterator[None]:
    """Holds the name folder's lock: exclusive for commit and retention, shared for reads.

    A shared lock on a name without a lock file takes no lock: every save creates the file
    before writing anything, so no writer has ever touched that folder (and a read-only
    registry, such as the shipped one, stays readable).
    """
    path = name_dir / LOCK_FILE
    if shared and not path.exists():
        yield
        return
    fd = os.open(path, os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # Closing releases the lock.


@contextlib.contextmanager
def run_claim(name_dir: Path, run_id: str) -> Iterator[None]:
    """Holds the name for one training run; a second live run under it is refused at once.

    The claim is a non-blocking flock on `.run`, which also records the holder's run id and pid
    for the refusal's message. It dies with the process, so a killed run never blocks the next.
    The claim leaves nothing behind: `.run` goes, and so does a name folder the run made and
    saved nothing in.
    """
    created = not name_dir.exists()
    name_dir.mkdir(parents=True, exist_ok=True)
    path = name_dir / RUN_FILE
    fd = _lock_run_file(path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {run_id}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        path.unlink()  # Still locked: a run that opened it meanwhile finds it gone and retries.
        if created:
            with contextlib.suppress(OSError):  # Not empty: the run saved, and its steps stay.
                name_dir.rmdir()
        os.close(fd)


def _lock_run_file(path: Path) -> int:
    """An open, exclusively flocked `path`, or `AlreadyExistsError` naming its live holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyExistsError(
                f"another run is training {path.parent.name!r} in {path.parent.parent} right "
                f"now ({holder}); wait for it to finish or train under another --name"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # Locked a file its last holder unlinked meanwhile: take the new one.


def _claim(directory: Path) -> int:
    """Locks a staging folder for as long as the returned descriptor stays open."""
    fd = os.open(directory, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _is_abandoned(directory: Path) -> bool:
    """True when no live process holds `_claim` on the folder (its writer finished or died)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


# --- staging, commit, retirement ----------------------------------------------------------------


@contextlib.contextmanager
def staging(name_dir: Path, step: int) -> Iterator[Path]:
    """A fresh staging folder for `step`, claimed by the primary process; deleted on exit unless
    the step was committed from it. Cleans up what killed writers left behind first.

    Every process of a multi-process run must enter it (the others get the primary's folder).
    """
    if not distributed.is_primary():
        token = distributed.from_primary(_FAILED)
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
            claim_fd = _claim(folder)
    finally:  # Even on failure: the other processes wait for word.
        distributed.from_primary(token)
    try:
        yield folder
    finally:
        if folder.exists():
            shutil.rmtree(folder)
        os.close(claim_fd)


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
            entry.name.startswith(STAGING_PREFIX) and _is_abandoned(entry)
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


def fsync_dir(folder: Path) -> None:
    """Makes a folder's entries (new files, renames) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- retention ----------------------------------------------------------------------------------


def check_policy(
    max_to_keep: int | None, best: tuple[str, str] | None, metrics: Mapping[str, Any]
) -> None:
    """Raises `ValueError` for a bad policy, or when `best`'s metric is there but no number.

    A save without `best`'s metric (a checkpoint taken inside an epoch, before any evaluation)
    is kept or retired by its step alone; it never counts as the best.
    """
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
    ):
        raise InvalidValueError(
            f"max_to_keep must be a positive int or None (keep all), got {max_to_keep!r}"
        )
    if best is None:
        return
    if not (isinstance(best, tuple | list) and len(best) == 2 and best[1] in BEST_MODES):
        raise InvalidValueError(f"best must be (metric name, 'max' or 'min'), got {best!r}")
    value = metrics.get(best[0])
    if best[0] in metrics and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidValueError(
            f"best={tuple(best)!r} needs a number at meta['metrics'][{best[0]!r}], "
            f"got {value!r} (metrics: {sorted(metrics)})"
        )


def steps_to_retire(
    steps: Sequence[int],
    *,
    max_to_keep: int | None,
    best: tuple[str, str] | None,
    metric_values: Mapping[int, float],
    just_saved: int,
) -> list[int]:
    """The steps to delete, ascending, of those `steps` the save may prune.

    Kept: the `max_to_keep` highest steps, the step with the best `metric_values` entry (the
    later one on a tie), and `just_saved` (a save never deletes what it just wrote, even below
    older higher steps).
    """
    if max_to_keep is None:
        return []
    keep = {*sorted(steps)[-max_to_keep:], just_saved}
    if best is not None and metric_values:
        sign = 1 if best[1] == "max" else -1
        keep.add(max(metric_values, key=lambda step: (sign * metric_values[step], step)))
    return sorted(set(steps) - keep)


def competes_for_best(value: Any) -> bool:
    """A recorded metric value that can be ranked: a number, not NaN (a diverged run's)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)

"""File locks that keep concurrent savers and readers of one name from tripping over each other.

`fcntl.flock` locks belong to an open file and die with the process, so a writer killed with
SIGKILL never leaves a stale lock behind: the next process simply gets it. The same property
tells abandoned staging folders apart from live ones (`is_abandoned`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


@contextlib.contextmanager
def name_lock(name_dir: Path, *, shared: bool = False) -> Iterator[None]:
    """Holds the name folder's lock: exclusive for commit and retention, shared for reads.

    A shared lock on a name without a lock file takes no lock: every save creates the file
    before writing anything, so no writer has ever touched that folder (and a read-only copy of
    a registry stays readable).
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


def claim(directory: Path) -> int:
    """Locks a staging folder for as long as the returned descriptor stays open."""
    fd = os.open(directory, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def is_abandoned(directory: Path) -> bool:
    """True when no live process holds `claim` on the folder (its writer finished or died)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True

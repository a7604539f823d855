"""Writing a file the zoo makes (an export, a picture): whole or not at all, errors in one line.

A regular file is written to a temporary file beside it, flushed to the disk, then renamed over
the target in one step: a full disk, a killed process or any error leaves the older file as it
was (and no temporary file behind), never a truncated one. A target that exists and is not a
regular file (`/dev/null`, a pipe) is written in place, as nothing can be renamed over it. Any
`OSError` becomes a `NotWritableError` naming the path and the reason (`--out /dev/full`: "No
space left on device").

Where a file may go at all is `zoo.hub.check_outside_registries`' rule, checked by the callers
before any work.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from zoo import interrupts
from zoo.errors import NotWritableError


def write_bytes(path: Path, data: bytes) -> None:
    """`path` holds `data`, or, on any failure, what it held before."""
    write_with(path, lambda file: file.write(data))


def write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into `path` atomically (see the module docstring); the folder must exist."""
    path = Path(path)
    try:
        with interrupts.deferred():  # A Ctrl-C waits for the rename (or the clean-up).
            if path.exists() and not path.is_file():
                with open(path, "wb") as file:
                    write(file)
                return
            _replace(path, write)
    except OSError as error:
        reason = error.strerror or str(error)
        raise NotWritableError(f"cannot write {path}: {reason}") from None


def _replace(path: Path, write: Callable[[BinaryIO], object]) -> None:
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _default_mode()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # mkstemp's 0600, made what a plain open would have made.
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask

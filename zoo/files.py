"""Whether the zoo can write where it is about to, asked before any work is done.

A run must not train an epoch, nor a picture be computed, to find out that its result cannot be
saved. Creating a file is the test: permission bits show neither a read-only file system nor
what root may do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from zoo.errors import NotAFolderError, NotWritableError


def check_writable(path: Path, what: str, hint: str = "") -> None:
    """Raises a one-line error about `what` `path` unless a file can be written there: `path`
    itself where it is a file (opened for update, left as it is), else a new file in `path`
    where it is a folder, else in its nearest existing folder, where the missing ones would be
    created. `NotAFolderError` where a file stands in the way, `NotWritableError` otherwise;
    `hint` (how to choose another place) ends the message."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    advice = f"; {hint}" if hint else ""
    if existing != path and not existing.is_dir():
        raise NotAFolderError(f"{what} {path}: {existing} is a file, not a folder{advice}")
    try:
        if existing.is_dir():
            tempfile.TemporaryFile(dir=existing).close()  # a unique name: others may probe too
        else:
            open(existing, "r+b").close()
    except OSError as error:
        where = "" if existing == path else f": {existing}, where it would go, is not"
        raise NotWritableError(
            f"{what} {path} is not writable{where} ({error.strerror}){advice}"
        ) from None

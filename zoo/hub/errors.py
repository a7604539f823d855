"""What can go wrong when loading from the registry, as exceptions the CLI reports in one line.

`CheckpointNotFoundError` is a `KeyError` (a name lookup failed); the other two are `ValueError`s
(the files are there but hold the wrong thing).
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import ZooError


class CheckpointNotFoundError(ZooError, KeyError):
    """No checkpoint under that name (or at that step); the message lists what does exist."""


class CorruptCheckpointError(ZooError, ValueError):
    """A file of a saved step does not match its sha256 manifest (or is missing, or extra).

    Attributes:
      path: the offending file.
      reason: what is wrong with it.
    """

    def __init__(self, path: Path, reason: str, hint: str = ""):
        self.path = Path(path)
        self.reason = reason
        advice = f"; {hint}" if hint else ""
        super().__init__(f"corrupt checkpoint file {self.path}: {reason}{advice}")

    def with_hint(self, hint: str) -> CorruptCheckpointError:
        """The same error with advice appended (e.g. which earlier step still verifies)."""
        return CorruptCheckpointError(self.path, self.reason, hint)


class ArchitectureMismatchError(ZooError, ValueError):
    """Saved arrays whose keys, shapes or dtypes differ from what the model expects."""

"""The errors that mean "the input was wrong", as opposed to "the program is broken".

Every zoo error derives from `ZooError` and from the built-in exception a caller would expect
(`UnknownModelError` is a `KeyError`, a bad config value an `InvalidValueError`, which is a
`ValueError`), so `except ValueError` keeps working. The command line turns exactly these into one
line on stderr and exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base of the errors a user can fix: a bad name, value, file or missing extra."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its message; every zoo error shows it as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidValueError(ZooError, ValueError):
    """A value out of range or of the wrong form (a config field, a shape, a file's content)."""


class InvalidTypeError(ZooError, TypeError):
    """A value of the wrong type, or an unknown argument name."""


class UnknownKeyError(ZooError, KeyError):
    """A name that is not one of the valid ones (a config key, say); the message lists them."""


class NotFoundError(ZooError, FileNotFoundError):
    """A file, folder or prepared data set that is not there; the message says how to get it."""


class NotAFolderError(ZooError, NotADirectoryError):
    """A path that must be a folder (a registry, say) but is a file."""


class AlreadyExistsError(ZooError, FileExistsError):
    """Something that would be overwritten, which the zoo never does."""


class NotWritableError(ZooError, PermissionError):
    """A folder or file the zoo must write into but cannot."""


class MissingDependencyError(ZooError, ImportError):
    """An optional extra that is not installed; the message names the pip command."""


def brief(value: object, limit: int = 80) -> str:
    """`value`'s repr on one line and at most `limit` characters, for an error message (an
    array's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""sha256 manifests: every file of a step, checked before a single byte of it is restored.

Orbax restores a bit-flipped data file without complaint (measured: wrong values, no error), so
integrity is ours to check. `write_manifest` runs after all data and metadata are on disk and
writes `manifest.json` last; the manifest carries a digest of its own file table, so a damaged
manifest is reported as such rather than as a mismatch of some innocent data file. A step whose
manifest is missing, unreadable, or disagrees with the files (changed, truncated, missing, or
unknown extra files) raises `CorruptCheckpointError` naming the file.

Writing also fsyncs every file and folder of the step, so that the commit (a rename, see
`zoo.hub.disk`) can only ever point at data that reached the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from zoo.hub.disk import fsync_dir
from zoo.hub.errors import CorruptCheckpointError

MANIFEST_FILE = "manifest.json"
FORMAT = "jax-zoo-manifest/1"
_CHUNK = 1 << 20


def write_manifest(step_dir: Path) -> dict[str, Any]:
    """Hashes and fsyncs every file under `step_dir`, then writes and fsyncs `manifest.json`."""
    files = {rel: _describe(step_dir / rel) for rel in _relative_files(step_dir)}
    manifest = {"format": FORMAT, "files": files, "digest": _table_digest(files)}
    with open(step_dir / MANIFEST_FILE, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for folder, _, _ in os.walk(step_dir):
        fsync_dir(Path(folder))
    return manifest


def read_manifest(step_dir: Path) -> dict[str, Any]:
    """The parsed manifest, checked against its own digest (not against the files)."""
    path = step_dir / MANIFEST_FILE
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT:
        raise CorruptCheckpointError(path, f"not a {FORMAT} manifest")
    if not all(_is_entry(entry) for entry in files.values()):
        raise CorruptCheckpointError(path, "a file entry lacks its integer size or sha256")
    if manifest.get("digest") != _table_digest(files):
        raise CorruptCheckpointError(path, "its file table does not match its digest")
    return manifest


def verify(step_dir: Path) -> dict[str, Any]:
    """Checks every file of a step against its manifest; returns the manifest.

    Cheap checks (missing, extra, size) run over all files before any hashing.
    """
    manifest = read_manifest(step_dir)
    listed = manifest["files"]
    present = set(_relative_files(step_dir))
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        raise CorruptCheckpointError(step_dir / missing[0], "missing")
    if extra:
        raise CorruptCheckpointError(step_dir / extra[0], "not in the manifest (added later)")
    for rel in sorted(listed):
        _check_size(step_dir, rel, listed[rel])
    for rel in sorted(listed):
        _check_sha256(step_dir, rel, listed[rel])
    return manifest


def verify_file(step_dir: Path, rel: str) -> None:
    """Checks one file of a step (its metadata, say) against the manifest, hashing no other."""
    listed = read_manifest(step_dir)["files"]
    if rel not in listed:
        raise CorruptCheckpointError(step_dir / rel, "not in the manifest")
    _check_size(step_dir, rel, listed[rel])
    _check_sha256(step_dir, rel, listed[rel])


def _check_size(step_dir: Path, rel: str, entry: dict[str, Any]) -> None:
    try:
        size = (step_dir / rel).stat().st_size
    except FileNotFoundError:
        raise CorruptCheckpointError(step_dir / rel, "missing") from None
    except OSError as error:
        raise CorruptCheckpointError(step_dir / rel, f"unreadable ({error.strerror})") from None
    if size != entry["size"]:
        raise CorruptCheckpointError(
            step_dir / rel, f"{size} bytes, the manifest says {entry['size']} (truncated?)"
        )


def _check_sha256(step_dir: Path, rel: str, entry: dict[str, Any]) -> None:
    try:
        digest = _sha256(step_dir / rel)
    except OSError as error:
        raise CorruptCheckpointError(step_dir / rel, f"unreadable ({error.strerror})") from None
    if digest != entry["sha256"]:
        raise CorruptCheckpointError(step_dir / rel, "sha256 differs from the manifest")


def read_json(path: Path) -> Any:
    """A JSON file of a step; `CorruptCheckpointError` naming it if it is missing, garbled, a
    folder, or unreadable."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CorruptCheckpointError(path, "missing") from None
    except IsADirectoryError:
        raise CorruptCheckpointError(path, "a folder where a file belongs") from None
    except OSError as error:
        raise CorruptCheckpointError(path, f"unreadable ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(path, f"not valid JSON ({error})") from None


def total_size(manifest: dict[str, Any]) -> int:
    """Bytes of all files a manifest lists."""
    return sum(entry["size"] for entry in manifest["files"].values())


def _relative_files(step_dir: Path) -> list[str]:
    """Every file under the step, as a '/'-separated relative path, except the manifest itself."""
    found = []
    for folder, _, names in os.walk(step_dir):
        for name in names:
            rel = (Path(folder) / name).relative_to(step_dir).as_posix()
            if rel != MANIFEST_FILE:
                found.append(rel)
    return sorted(found)


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
    )


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path, sync=True)}


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _table_digest(files: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()

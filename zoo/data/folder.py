"""Image folders (`--dataset folder:PATH`), read as torchvision's `ImageFolder` reads them.

Layouts:
- `PATH/train/CLASS/...` with the held-out images in `PATH/val/CLASS/...` (else `validation/`,
  else `test/`; the first that exists);
- `PATH/CLASS/...` (or `PATH/train/` alone): no held-out folder, so a seeded, stratified split
  holds out `HELD_OUT_FRACTION` of every class (at least one image of each class with two or
  more). The split is fixed (`SPLIT_SEED`): data, not training randomness, so `zoo eval` sees
  the images training held out.

Classes are the class folders' names, sorted, as `ImageFolder.find_classes` orders them: label i
is the i-th name. Images are found below each class folder recursively, symlinks followed, in
`ImageFolder`'s order. Files without an image extension (`README.txt`, `.DS_Store`) are skipped,
as `ImageFolder` skips them, and counted in the listing's summary.

Everything the listing can tell is checked before training, each a one-line error naming the file
or folder: a file with an image extension whose header does not read (corrupt, not an image), an
image over `zoo.images.MAX_PIXELS`, an empty class folder, a folder with no images, a class folder
that is a symlink loop, held-out classes that training does not have. Headers are read in a thread
pool; pixels are decoded only when training reads them (`zoo.data.transforms`), and a file that
fails then (truncated, vanished) stops the run with the same kind of error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zoo.data.transforms import IMAGE_EXTENSIONS, image_size, is_image_file
from zoo.errors import InvalidValueError, NotAFolderError, NotFoundError

PREFIX = "folder:"
HELD_OUT_FOLDERS = ("val", "validation", "test")
HELD_OUT_FRACTION = 0.1
SPLIT_SEED = 0
HEADER_THREADS = 16


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The images of one split: file `paths`, their `labels` and (height, width) `sizes`."""

    paths: tuple[str, ...]
    labels: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> FolderSplit:
        return FolderSplit(
            tuple(self.paths[i] for i in indices), self.labels[indices], self.sizes[indices]
        )


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A listed image folder: class names, both splits, what was skipped and where the held-out
    split comes from."""

    root: Path
    class_names: tuple[str, ...]
    train: FolderSplit
    test: FolderSplit
    skipped: int
    held_out: str

    @property
    def summary(self) -> str:
        skipped = f"; skipped {self.skipped} files that are not images" if self.skipped else ""
        return (
            f"{self.root}: {len(self.class_names)} classes, {len(self.train):,} training and "
            f"{len(self.test):,} held-out images ({self.held_out}){skipped}"
        )

    def fingerprint(self) -> str:
        """A digest of the listing (files, labels, sizes): a changed folder has another one."""
        digest = hashlib.sha256()
        for split in (self.train, self.test):
            for path in split.paths:
                digest.update(os.path.relpath(path, self.root).encode() + b"\0")
            digest.update(split.labels.tobytes() + split.sizes.tobytes())
        return digest.hexdigest()[:16]


def is_folder_name(name: str) -> bool:
    return name.startswith(PREFIX)


def list_folder(name: str) -> ImageFolder:
    """Lists and checks the image folder that `folder:PATH` names."""
    root = Path(name.removeprefix(PREFIX)).expanduser()
    if not root.exists():
        raise NotFoundError(f"{name}: no such folder")
    if not root.is_dir():
        raise NotAFolderError(f"{name}: {root} is a file, not a folder of class folders")
    if (root / "train").is_dir():
        train_root = root / "train"
        held_out_root = next((root / n for n in HELD_OUT_FOLDERS if (root / n).is_dir()), None)
    else:
        train_root, held_out_root = root, None
    class_names = _classes(train_root)
    train, skipped = _list_split(train_root, class_names, class_names)
    if held_out_root is None:
        train_rows, test_rows = held_out_rows(train.labels, HELD_OUT_FRACTION, SPLIT_SEED)
        test = train.subset(test_rows)
        train = train.subset(train_rows)
        held_out = f"a seeded {HELD_OUT_FRACTION:.0%} of each class"
    else:
        held_out_classes = _classes(held_out_root)
        unknown = sorted(set(held_out_classes) - set(class_names))
        if unknown:
            raise InvalidValueError(
                f"{held_out_root}: classes {', '.join(unknown)} are not among the training "
                f"classes in {train_root}"
            )
        test, skipped_test = _list_split(held_out_root, held_out_classes, class_names)
        skipped += skipped_test
        held_out = f"{held_out_root.name}/"
    if not len(test):
        raise InvalidValueError(
            f"{root}: no image can be held out (every class has one image); add images, or a "
            f"{HELD_OUT_FOLDERS[0]}/ folder beside train/"
        )
    return ImageFolder(root, class_names, train, test, skipped, held_out)


def held_out_rows(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out), each sorted: a random `fraction` of every class (rounded, at
    least one of a class with two or more examples) held out."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.append(rng.choice(rows, size=count, replace=False))
    is_held = np.zeros(len(labels), bool)
    is_held[np.concatenate(held)] = True
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _classes(root: Path) -> tuple[str, ...]:
    """The class folders' names, sorted; a class folder that is a symlink loop is an error."""
    names = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_symlink():
                _check_link(Path(entry.path))
            if entry.is_dir():
                names.append(entry.name)
    if not names:
        raise InvalidValueError(
            f"{root} has no class folders: expected {root}/CLASS/IMAGE files (one folder of "
            "images per class), optionally under train/ and val/"
        )
    return tuple(sorted(names))


def _list_split(
    root: Path, classes: tuple[str, ...], all_classes: tuple[str, ...]
) -> tuple[FolderSplit, int]:
    """The images below `root/CLASS` for `classes`, labelled by their index in `all_classes`,
    with their header-read sizes; and how many non-image files were skipped."""
    paths, labels, skipped = [], [], 0
    for name in classes:
        files, skipped_here = _images_below(root / name)
        if not files:
            raise InvalidValueError(
                f"{root / name}: an empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files); "
                "remove it or add images"
            )
        paths += files
        labels += [all_classes.index(name)] * len(files)
        skipped += skipped_here
    with concurrent.futures.ThreadPoolExecutor(HEADER_THREADS) as pool:
        sizes = list(pool.map(image_size, paths))  # The first bad file's error is raised.
    heights_widths = np.array([(h, w) for w, h in sizes], np.int32).reshape(-1, 2)
    return FolderSplit(tuple(paths), np.asarray(labels, np.int32), heights_widths), skipped


def _images_below(folder: Path) -> tuple[list[str], int]:
    """Image files below `folder` in `ImageFolder`'s order (sorted walk, symlinks followed), and
    the number of other files; a symlink loop is an error naming it."""
    _check_link(folder)
    images, skipped = [], 0
    for top, _, files in sorted(_walk(folder, frozenset())):
        for name in sorted(files):
            if is_image_file(name):
                images.append(os.path.join(top, name))
            else:
                skipped += 1
    return images, skipped


def _walk(
    folder: Path, ancestors: frozenset[tuple[int, int]]
) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(folder, followlinks=True)`, but a folder inside itself is an error, not a hang."""
    stat = os.stat(folder)
    key = (stat.st_dev, stat.st_ino)
    if key in ancestors:
        raise InvalidValueError(f"{folder}: a symlink loop (a folder inside itself)")
    dirs, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                _check_link(Path(entry.path))
            (dirs if entry.is_dir() else files).append(entry.name)
    yield str(folder), dirs, files
    for name in dirs:
        yield from _walk(folder / name, ancestors | {key})


def _check_link(path: Path) -> None:
    """A symlink whose target loops back on itself is an error naming it."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InvalidValueError(f"{path}: a symlink loop") from None
        if not path.is_symlink():
            raise

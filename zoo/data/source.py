"""What a data set is, in memory (`Dataset`: `Split`s of arrays) or opened (`DataSource`).

`zoo.data.sets` makes them by name or path; training reads a `DataSource` from storage
(`zoo.training.streaming`) or a `Dataset` from the devices (`zoo.training.pipeline`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zoo.data.records import Records
from zoo.errors import InvalidTypeError, InvalidValueError

# Where data sets are prepared, when `--data-dir` does not say (`zoo.data.resolve_data_dir`).
DATA_DIR_ENV = "ZOO_DATA_DIR"
# The zoo's own names: the embedded digits, TFDS sets it has always named, generated data.
PUBLIC_TFDS_SETS = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100")
DATASETS = ("mnist5k", *PUBLIC_TFDS_SETS, "synthetic")
# The sets whose `--augment` is small shifts (digits and clothes, which a flip would change).
DIGIT_SETS = ("mnist5k", "mnist", "fashion_mnist", "kmnist", "synthetic")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: `images` (N, H, W, C) uint8 and `labels` (N,) int32.

    `sizes` (N, 2): for images of many sizes, each image's (height, width); the images are then
    padded with zeros to the largest. None: all are (H, W).
    """

    images: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray | None = None

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
        sizes = None if self.sizes is None else self.sizes[:count]
        return Split(self.images[:count], self.labels[:count], sizes)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set in memory: a training split and a held-out split never
    trained on. `class_names[i]` names label i, or None where the set has no names."""

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.class_names is None:
            return
        names = self.class_names
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise InvalidTypeError(f"class_names must be a sequence of strings, got {names!r}")
        if len(names) != self.num_classes:
            raise InvalidValueError(
                f"{len(names)} class names for {self.num_classes} classes; give one per class"
            )
        object.__setattr__(self, "class_names", tuple(names))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (H, W, C) of the images the model sees (the held-out ones)."""
        return tuple(int(d) for d in self.test.images.shape[1:])  # type: ignore[return-value]

    @property
    def augmentation(self) -> str:
        """What `--augment` applies (`zoo.training.augment`)."""
        return augmentation_for(self.name, self.train.sizes is not None)


def augmentation_for(name: str, any_size: bool) -> str:
    """Random-resized crops and flips for images of any size (the ImageNet protocol); small
    shifts for digits; 4-pixel crops and flips for other images of one size (CIFAR's)."""
    if any_size:
        return "random_resized_crop"
    return "translate" if name in DIGIT_SETS else "crop_flip"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data set opened, not read: each split's examples by index (`zoo.data.records`).

    Attributes:
      image_shape: the (H, W, C) of every image, or None for images of any size.
      channels: the images' channels (1 or 3); images of any size are decoded to the model's.
      train_sizes: the training images' (height, width) where the listing knows them (folders).
      fingerprint: what identifies the data's content and order; a checkpoint records it, and a
        resume on other data is refused.
      summary: a line describing what was found (folders), or None.
      in_memory: the set itself when it lives in memory already (`synthetic`, arrays).
    """

    name: str
    train: Records
    test: Records
    num_classes: int
    class_names: tuple[str, ...] | None
    image_shape: tuple[int, int, int] | None
    channels: int
    fingerprint: str
    train_sizes: np.ndarray | None = None
    summary: str | None = None
    in_memory: Dataset | None = None

    @property
    def augmentation(self) -> str:
        return augmentation_for(self.name, self.image_shape is None)

    def device_bytes(self, input_size: tuple[int, int], channels: int) -> int | None:
        """The bytes `load_dataset` holds for this set, or None where only reading it all
        would tell (images of any size, sizes unknown)."""
        if self.image_shape is not None:
            return (len(self.train) + len(self.test)) * int(np.prod(self.image_shape))
        if self.train_sizes is None:
            return None
        largest = self.train_sizes.max(axis=0) if len(self.train_sizes) else (0, 0)
        return channels * (
            len(self.train) * int(largest[0]) * int(largest[1])
            + len(self.test) * input_size[0] * input_size[1]
        )

"""Random access to the examples of a split, without reading them all: what streaming reads.

Each kind of `Records` maps an index to `(image, label)`, where the image is what
`zoo.data.transforms` decodes: a file path (an image folder), the encoded bytes of a TFDS `Image`
feature, or decoded uint8 pixels (a TFDS `Tensor` feature, or arrays in memory). All are
picklable, so Grain's worker processes can read them: a TFDS data source reopens its
array_record files in the worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from zoo.data.transforms import Encoded


class Records(Protocol):
    """A split's examples by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Encoded, int]: ...

    def describe(self, index: int) -> str:
        """Names example `index` in an error message: its file, or the set, split and row."""
        ...


@dataclasses.dataclass(frozen=True)
class FileRecords:
    """The image files of an image-folder split, with their labels."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Encoded, int]:
        return self.paths[index], int(self.labels[index])

    def describe(self, index: int) -> str:
        return self.paths[index]


@dataclasses.dataclass(frozen=True)
class TfdsRecords:
    """A split of a prepared TFDS set, through its array_record data source.

    `source` is `builder.as_data_source(split)`, with `SkipDecoding` for an `Image` feature of
    any size, so that the worker decodes only the pixels it needs.
    """

    source: Sequence[dict[str, Any]]
    name: str
    image_key: str = "image"
    label_key: str = "label"

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Encoded, int]:
        example = self.source[index]
        return example[self.image_key], int(example[self.label_key])

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


@dataclasses.dataclass(frozen=True)
class ArrayRecords:
    """Images and labels held in memory (`zoo.training.arrays`, `synthetic`)."""

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Encoded, int]:
        return self.images[index], int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


@dataclasses.dataclass(frozen=True)
class FirstRecords:
    """The first `count` examples of `records` (`--max-train-examples`)."""

    records: Records
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Encoded, int]:
        if not 0 <= index < self.count:
            raise IndexError(f"example {index} of {self.count}")
        return self.records[index]

    def describe(self, index: int) -> str:
        return self.records.describe(index)

"""Which example each step reads, and reading it: the part of streaming that runs in workers.

A run's data order is a pure function of (seed, epoch, position): epoch e visits the training
split in the order `epoch_permutation(seed, e, N)`, step s takes positions [s*B, (s+1)*B) of it
(B the global batch; the last partial batch is dropped, a different remainder each epoch), and
the random choices of an example's transform come from `example_rng(seed, e, position)`. So the
batches are the same whatever the number of processes or worker processes, and a run resumed at
any step reads exactly what the uninterrupted run read: the iterator's state is its position.
The device path (`zoo.training.pipeline`) draws its epochs from the same `epoch_permutation`.

Each process reads only its own rows of every global batch (`BatchPlan.rows`, the rows its devices
hold). The readers here are picklable callables from a process-local position to an example,
which Grain maps over positions (`zoo.training.streaming`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
from typing import Any, Protocol

import numpy as np

from zoo.data.records import Records
from zoo.data.transforms import CROP_FRACTION, Encoded, centre_crop, random_resized_crop
from zoo.errors import InvalidValueError

# Tags that keep the seed's streams apart (any distinct constants).
SHUFFLE_STREAM = 1
AUGMENT_STREAM = 2


def epoch_permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order (int32) in which epoch `epoch` of a run seeded `seed` visits `count` examples."""
    return np.random.default_rng([SHUFFLE_STREAM, seed, epoch]).permutation(count).astype(np.int32)


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The random numbers of the example at `position` of epoch `epoch`'s order."""
    return np.random.default_rng([AUGMENT_STREAM, seed, epoch, position])


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How a process's stream of examples lines up with the run's global batches.

    Attributes:
      seed: the run's seed.
      num_examples: the training split's size N.
      batch_size: the global batch B.
      rows: the rows of each global batch this process reads (its devices' rows), ascending.
    """

    seed: int
    num_examples: int
    batch_size: int
    rows: tuple[int, ...]

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def local_batch(self) -> int:
        return len(self.rows)

    def first_position(self, step: int) -> int:
        """This process's stream position where run step `step` (counted over epochs) begins."""
        return step * self.local_batch

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, position in that epoch's order) of this process's stream `position`."""
        step, row = divmod(position, self.local_batch)
        epoch, step = divmod(step, self.steps_per_epoch)
        return epoch, step * self.batch_size + self.rows[row]


class Transform(Protocol):
    """Encoded image -> uint8 `output_shape` (H, W, C); `rng` for random choices."""

    @property
    def output_shape(self) -> tuple[int, int, int]: ...

    def __call__(self, source: Encoded, rng: np.random.Generator, what: str) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Unchanged:
    """Images stored decoded at one `shape`: passed through, the shape checked."""

    shape: tuple[int, int, int]

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self.shape

    def __call__(self, source: Encoded, rng: np.random.Generator, what: str) -> np.ndarray:
        image = np.asarray(source)
        image = image[..., None] if image.ndim == 2 else image
        if image.dtype != np.uint8 or image.shape != self.shape:
            raise InvalidValueError(
                f"{what}: expected a uint8 {self.shape} image, got {image.dtype} {image.shape}"
            )
        return image


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """The ImageNet training transform to `size` (H, W) (`zoo.data.transforms`)."""

    size: tuple[int, int]
    channels: int

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (*self.size, self.channels)

    def __call__(self, source: Encoded, rng: np.random.Generator, what: str) -> np.ndarray:
        return random_resized_crop(source, self.size, rng, channels=self.channels, what=what)


@dataclasses.dataclass(frozen=True)
class CentreCrop:
    """The ImageNet evaluation transform to `size` (H, W) (`zoo.data.transforms`)."""

    size: tuple[int, int]
    channels: int
    crop_fraction: float = CROP_FRACTION

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (*self.size, self.channels)

    def __call__(self, source: Encoded, rng: np.random.Generator, what: str) -> np.ndarray:
        del rng  # Deterministic.
        return centre_crop(
            source,
            self.size,
            crop_fraction=self.crop_fraction,
            channels=self.channels,
            what=what,
        )


class TrainReader:
    """Stream position -> the training example {"image", "label"} that position reads."""

    def __init__(self, plan: BatchPlan, records: Records, transform: Transform) -> None:
        self.plan, self.records, self.transform = plan, records, transform
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation), cached

    def __call__(self, position: int) -> dict[str, Any]:
        epoch, in_epoch = self.plan.locate(position)
        index = int(self._epoch_order(epoch)[in_epoch])
        source, label = self.records[index]
        rng = example_rng(self.plan.seed, epoch, in_epoch)
        image = self.transform(source, rng, self.records.describe(index))
        return {"image": image, "label": np.int32(label)}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_permutation(self.plan.seed, epoch, self.plan.num_examples))
        return self._order[1]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_order": None}  # Workers draw their own permutations.

    def example_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{key: (shape, dtype)} of the examples, known without reading one."""
        return {
            "image": (self.transform.output_shape, np.dtype(np.uint8)),
            "label": ((), np.dtype(np.int32)),
        }


@dataclasses.dataclass(frozen=True)
class EvalReader:
    """Stream position -> a held-out example {"image", "label", "weight"}, in split order.

    Global batches of `batch_size` cover the split once; the last is padded with example 0 at
    weight 0, so every batch has one shape and every example counts once (as the device path's
    `eval_order`). This process reads its `rows` of each batch.
    """

    records: Records
    transform: Transform
    batch_size: int
    rows: tuple[int, ...]

    def example_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{key: (shape, dtype)} of the examples, known without reading one."""
        return {
            "image": (self.transform.output_shape, np.dtype(np.uint8)),
            "label": ((), np.dtype(np.int32)),
            "weight": ((), np.dtype(np.float32)),
        }

    @property
    def batches(self) -> int:
        return -(-len(self.records) // self.batch_size)

    def __len__(self) -> int:
        return self.batches * len(self.rows)

    def __call__(self, position: int) -> dict[str, Any]:
        batch, row = divmod(position, len(self.rows))
        index = batch * self.batch_size + self.rows[row]
        weight = index < len(self.records)
        index = index if weight else 0
        source, label = self.records[index]
        image = self.transform(source, np.random.default_rng(0), self.records.describe(index))
        return {"image": image, "label": np.int32(label), "weight": np.float32(weight)}


def die_with_parent(worker: int, workers: int) -> None:
    """Grain's `worker_init_fn`: the worker process ends when the training process does.

    A worker whose parent is killed (SIGKILL, the out-of-memory killer) would otherwise wait on
    its full queue for ever; on Linux the kernel sends it SIGKILL too (`PR_SET_PDEATHSIG`).
    """
    del worker, workers
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # The parent died before the request: follow it now.
        os.kill(os.getpid(), signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>

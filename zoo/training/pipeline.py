"""The device path: a split kept whole on the devices, batches gathered inside the jitted step.

The raw uint8 split is replicated on every device once. Each epoch's order is the seeded
permutation of `zoo.data.sampling` (the one streaming uses too), sent to the devices once per
epoch; each step gathers its rows by index, and `prepare_batch` crops, augments and applies the
model's `Preprocessing`, all inside the jitted step. On CPU this beats any host pipeline for the
small sets of `zoo.data`, and the host never touches a batch.

Several processes (`zoo.distributed`) keep this design rather than feeding each process's
batch slice from the host: every process holds the whole split (read in shares and exchanged
once, `zoo.data`) and draws the same permutation from the same seed, so a step's global batch
is the same rows as in a single-process run, and each device gathers its own slice of it
(`constrain_batch`). Results therefore equal a single process's with the same global batch and
seed, and still nothing crosses from host to device per step; the price, holding the small set
on every device, is what one process pays already.

`prepare_batch` is where both paths meet: the streaming path (`zoo.training.streaming`) hands it
the same raw batches, read from storage instead of gathered, so the step means the same on both.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from zoo.data import Split
from zoo.data.sampling import epoch_permutation
from zoo.preprocessing import Preprocessing
from zoo.training.augment import Augmentation, BatchMixing, resized_crops
from zoo.training.sharding import constrain_batch, replicate
from zoo.training.step import Batch

# "image": (B, H, W, C) uint8 as stored; "label": (B,) int32; "size": (B, 2) the (height,
# width) of images of any size, padded to H, W; eval: "weight" (B,).
RawBatch = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A split on the devices: raw `images` (N, H, W, C) uint8, `labels` (N,) int32 and, for
    images of any size (padded), their `sizes` (N, 2)."""

    images: jax.Array
    labels: jax.Array
    sizes: jax.Array | None = None

    @classmethod
    def from_host(cls, split: Split, mesh: Mesh) -> DeviceSplit:
        return cls(*replicate((split.images, split.labels, split.sizes), mesh))

    def __len__(self) -> int:
        return self.labels.shape[0]


def epoch_order(seed: int, epoch: int, *, num_examples: int, batch_size: int) -> np.ndarray:
    """(steps, batch_size) example indices: epoch `epoch`'s permutation, last partial dropped.

    Dropping the remainder keeps every step's shapes identical (one compile); it is a different
    remainder each epoch, so no example is left out for good.
    """
    steps = num_examples // batch_size
    order = epoch_permutation(seed, epoch, num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size)


@dataclasses.dataclass(frozen=True)
class Crops:
    """For images of any size on the devices: each cut to `size` (H, W) by the ImageNet
    protocol's random-resized crop and flip (`random`), or its evaluation crop."""

    size: tuple[int, int]
    random: bool


def prepare_batch(
    raw: RawBatch,
    key: jax.Array,
    *,
    preprocessing: Preprocessing,
    augmentation: Augmentation | None,
    crops: Crops | None = None,
    mixing: BatchMixing | None = None,
) -> Batch:
    """Inside jit: raw images cut to size (`crops`, for padded images of any size), then
    `augmentation`-ed with `key` (a key folded from it after crops), standardised, and mixed
    (mixup/CutMix, with a key folded from `key`) into soft "target"s when `mixing` is given."""
    images, labels = raw["image"], raw["label"]
    if crops is not None:
        images = resized_crops(images, raw["size"], key, crops.size, random=crops.random)
    if augmentation is not None:
        images = augmentation(images, key if crops is None else jax.random.fold_in(key, 2))
    batch = {"image": preprocessing(images), "label": labels}
    if mixing is not None:
        image, target, label = mixing(batch["image"], labels, jax.random.fold_in(key, 1))
        batch = {"image": image, "label": label, "target": target}
    return batch


@dataclasses.dataclass(frozen=True)
class DeviceFeed:
    """The training split on the devices; each step's inputs are the split and the epoch's
    order, and the step gathers its own rows (`raw_batch`)."""

    train: DeviceSplit
    seed: int
    batch_size: int
    mesh: Mesh

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    def compile_inputs(self) -> tuple[DeviceSplit, jax.Array]:
        return self.train, self._order(0)

    def epoch(self, epoch: int, first_step: int) -> Iterator[tuple[DeviceSplit, jax.Array]]:
        """The inputs of steps `first_step`.. of `epoch`: the same for every step."""
        return itertools.repeat((self.train, self._order(epoch)), self.steps_per_epoch - first_step)

    def raw_batch(self, inputs: tuple[DeviceSplit, jax.Array], step: jax.Array) -> RawBatch:
        """Inside jit: step `step`'s rows. Every epoch has the same number of steps, so the step
        counter says which batch is next: the host sends nothing per step."""
        split, order = inputs
        rows = constrain_batch(order[step % self.steps_per_epoch], self.mesh)
        raw = {"image": split.images[rows], "label": split.labels[rows]}
        if split.sizes is not None:
            raw["size"] = split.sizes[rows]
        return raw

    def close(self) -> None:
        """Nothing to release: the split lives as long as the arrays."""

    def _order(self, epoch: int) -> jax.Array:
        order = epoch_order(
            self.seed, epoch, num_examples=len(self.train), batch_size=self.batch_size
        )
        return replicate(order, self.mesh)


def eval_order(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(batches, batch_size) indices covering every example once, and 0/1 weights.

    The last batch is padded with example 0 at weight 0, so all batches share one shape and
    every held-out example counts exactly once.
    """
    batches = -(-num_examples // batch_size)
    padded = np.arange(batches * batch_size)
    weights = (padded < num_examples).astype(np.float32)
    indices = np.where(weights > 0, padded, 0).astype(np.int32)
    return indices.reshape(batches, batch_size), weights.reshape(batches, batch_size)


def eval_batch(
    split: DeviceSplit,
    indices: jax.Array,
    weights: jax.Array,
    mesh: Mesh,
    *,
    preprocessing: Preprocessing,
) -> Batch:
    """Inside jit: the rows `indices` of `split`, standardised, with their padding weights."""
    indices, weights = constrain_batch((indices, weights), mesh)
    return {
        "image": preprocessing(split.images[indices]),
        "label": split.labels[indices],
        "weight": weights,
    }

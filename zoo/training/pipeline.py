"""From a split kept whole on the devices to model-ready batches, without leaving the device.

The raw uint8 split is replicated on every device once. Each epoch draws one permutation (key:
seed and epoch); each step gathers its rows by index, augments them and applies the model's
`Preprocessing`, all inside the jitted step. On CPU this beats any host pipeline for the small
sets of `zoo.data`, and the host never touches a batch.

Several processes (`zoo.distributed`) keep this design rather than feeding each process's
batch slice from the host: every process holds the whole split (read in shares and exchanged
once, `zoo.data`) and draws the same permutation from the same key, so a step's global batch
is the same rows as in a single-process run, and each device gathers its own slice of it
(`constrain_batch`). Results therefore equal a single process's with the same global batch and
seed, and still nothing crosses from host to device per step; the price, holding the small set
on every device, is what one process pays already.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import Mesh

from zoo.data import Split
from zoo.preprocessing import Preprocessing
from zoo.training.augment import Augmentation, BatchMixing
from zoo.training.sharding import constrain_batch, replicate
from zoo.training.step import Batch


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A split on the devices: raw `images` (N, H, W, C) uint8 and `labels` (N,) int32."""

    images: jax.Array
    labels: jax.Array

    @classmethod
    def from_host(cls, split: Split, mesh: Mesh) -> DeviceSplit:
        return cls(*replicate((split.images, split.labels), mesh))

    def __len__(self) -> int:
        return self.labels.shape[0]


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def epoch_order(
    key: jax.Array, epoch: int | jax.Array, *, num_examples: int, batch_size: int
) -> jax.Array:
    """(steps, batch_size) example indices: a fresh permutation per epoch, last partial dropped.

    Dropping the remainder keeps every step's shapes identical (one compile); it is a different
    remainder each epoch, so no example is left out for good.
    """
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    steps = num_examples // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size)


def training_batch(
    split: DeviceSplit,
    indices: jax.Array,
    key: jax.Array,
    mesh: Mesh,
    *,
    preprocessing: Preprocessing,
    augmentation: Augmentation | None,
    mixing: BatchMixing | None = None,
) -> Batch:
    """Inside jit: the rows `indices` of `split`, augmented with `key`, standardised, and mixed
    (mixup/CutMix, with a key folded from `key`) into soft "target"s when `mixing` is given."""
    indices = constrain_batch(indices, mesh)  # Each device gathers only its own rows.
    images, labels = split.images[indices], split.labels[indices]
    if augmentation is not None:
        images = augmentation(images, key)
    batch = {"image": preprocessing(images), "label": labels}
    if mixing is not None:
        image, target, label = mixing(batch["image"], labels, jax.random.fold_in(key, 1))
        batch = {"image": image, "label": label, "target": target}
    return batch


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

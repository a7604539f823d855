"""On-device data augmentation of raw uint8 image batches, inside the jitted step.

Each function maps (images (N, H, W, C), key) -> images of the same shape and dtype. Padding is
with zeros in raw pixel space, as torchvision's `RandomCrop(padding=...)` does: black for
natural images, the background for digits. Keys come from `fold_in` on the step number, so the
augmentation of a step is the same however training was interrupted and resumed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Zero-pads by `padding` pixels and crops back at a random offset: a shift of +-padding."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(  # noqa: E731
        image, (offset[0], offset[1], 0), (h, w, c)
    )
    return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def translate(images: jax.Array, key: jax.Array) -> jax.Array:
    """Digits: shifts of up to 2 pixels each way (a flip would turn a 2 into something else)."""
    return random_crop(images, key, padding=2)


def crop_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Natural images: the CIFAR recipe of He et al. 2015, 4-pixel padded crops and flips."""
    crop_key, flip_key = jax.random.split(key)
    return random_flip(random_crop(images, crop_key, padding=4), flip_key)


AUGMENTATIONS: dict[str, Augmentation] = {"translate": translate, "crop_flip": crop_flip}

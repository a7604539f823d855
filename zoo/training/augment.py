"""On-device data augmentation inside the jitted step: of raw uint8 images, and of whole batches.

Each `AUGMENTATIONS` function maps (images (N, H, W, C), key) -> images of the same shape and
dtype. Padding is with zeros in raw pixel space, as torchvision's `RandomCrop(padding=...)`
does: black for natural images, the background for digits. `BatchMixing` (mixup, CutMix) then
mixes the standardised batch and its labels. Keys come from `fold_in` on the step number, so
the augmentation of a step is the same however training was interrupted and resumed.
"""

from __future__ import annotations

import dataclasses
import functools
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


def mixup(
    images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Zhang et al. 2018, "mixup": lam x + (1 - lam) x' with lam ~ Beta(alpha, alpha), the
    targets likewise; x' is the batch reversed, and one lam serves the batch (as timm does)."""
    lam = jax.random.beta(key, alpha, alpha)
    mixed = lam * images + (1 - lam) * images[::-1]
    return mixed.astype(images.dtype), lam * targets + (1 - lam) * targets[::-1]


def cutmix(
    images: jax.Array, targets: jax.Array, key: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Yun et al. 2019, "CutMix": a box of area about 1 - lam (lam ~ Beta(alpha, alpha)) from
    the reversed batch, centred uniformly and clipped to the image (timm's `rand_bbox`); the
    targets mix by the area actually pasted."""
    lam_key, y_key, x_key = jax.random.split(key, 3)
    _, h, w, _ = images.shape
    cut = jnp.sqrt(1 - jax.random.beta(lam_key, alpha, alpha))

    def span(key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
        half = (cut * size).astype(jnp.int32) // 2
        centre = jax.random.randint(key, (), 0, size)
        return jnp.clip(centre - half, 0, size), jnp.clip(centre + half, 0, size)

    (y0, y1), (x0, x1) = span(y_key, h), span(x_key, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    mixed = jnp.where(box[None, :, :, None], images[::-1], images)
    lam = 1 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    return mixed, lam * targets + (1 - lam) * targets[::-1]


@dataclasses.dataclass(frozen=True)
class BatchMixing:
    """mixup and/or CutMix of a standardised batch; with both, one of them per batch with
    probability 1/2 each (timm's `Mixup(switch_prob=0.5)`). An alpha of 0 turns one off.

    Returns the mixed images, the mixed target distributions (N, num_classes) and each
    example's dominant label (its larger share), which train accuracy is counted against.
    """

    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int

    def __call__(
        self, images: jax.Array, labels: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        targets = jax.nn.one_hot(labels, self.num_classes)
        mix = functools.partial(mixup, alpha=self.mixup_alpha)
        cut = functools.partial(cutmix, alpha=self.cutmix_alpha)
        choice_key, key = jax.random.split(key)
        if self.mixup_alpha and self.cutmix_alpha:
            use_cutmix = jax.random.bernoulli(choice_key)
            images, targets = jax.lax.cond(use_cutmix, cut, mix, images, targets, key)
        else:
            images, targets = (cut if self.cutmix_alpha else mix)(images, targets, key)
        return images, targets, targets.argmax(-1)


def batch_mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> BatchMixing | None:
    """The mixing that `--mixup` and `--cutmix` ask for, or None when both are 0."""
    if not (mixup_alpha or cutmix_alpha):
        return None
    return BatchMixing(mixup_alpha, cutmix_alpha, num_classes)

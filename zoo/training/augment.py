"""On-device data augmentation inside the jitted step: of raw uint8 images, and of whole batches.

For images of any size held on the devices (padded), `resized_crops` is the ImageNet protocol
that `zoo.data.transforms` runs on the host for streamed ones: the same crop distribution and
resize filter, its random draws from JAX keys instead of NumPy generators.

Each `AUGMENTATIONS` function maps (images (N, H, W, C), key) -> images of the same shape and
dtype. Padding is with zeros in raw pixel space, as torchvision's `RandomCrop(padding=...)`
does: black for natural images, the background for digits. `BatchMixing` (mixup, CutMix) then
mixes the standardised batch and its labels. Keys come from `fold_in` on the step number, so
the augmentation of a step is the same however training was interrupted and resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from zoo.data.transforms import (
    RANDOM_CROP_RATIO,
    RANDOM_CROP_SCALE,
    RANDOM_CROP_TRIES,
    eval_resize,
)

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


def random_crop_boxes(key: jax.Array, sizes: jax.Array) -> jax.Array:
    """(N, 4) boxes (top, left, height, width) for images of (height, width) `sizes`: torchvision's
    `RandomResizedCrop.get_params`, its 10 tries drawn at once and the first that fits taken."""
    return _boxes(_crop_draws(key, sizes.shape[0]), sizes)


def _crop_draws(key: jax.Array, n: int) -> jax.Array:
    """(N, 2 * tries + 3) uniform numbers: each try's area and log-ratio, then the box's top and
    left, then the flip. One draw: each `jax.random` call costs XLA a compile of its own."""
    return jax.random.uniform(key, (n, 2 * RANDOM_CROP_TRIES + 3))


def _boxes(draws: jax.Array, sizes: jax.Array) -> jax.Array:
    tries = RANDOM_CROP_TRIES
    height, width = (sizes[:, i, None].astype(jnp.float32) for i in (0, 1))
    low, high = RANDOM_CROP_SCALE
    area = height * width * (low + (high - low) * draws[:, :tries])
    log_low, log_high = (math.log(r) for r in RANDOM_CROP_RATIO)
    aspect = jnp.exp(log_low + (log_high - log_low) * draws[:, tries : 2 * tries])
    w, h = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits, axis=1)[:, None]
    w, h = (jnp.take_along_axis(x, first, axis=1)[:, 0] for x in (w, h))
    height, width = height[:, 0], width[:, 0]
    # No try fits: the whole image, cut to the nearest ratio in range, centred.
    ratio, (low, high) = width / height, RANDOM_CROP_RATIO
    found = fits.any(axis=1)
    w = jnp.where(found, w, jnp.where(ratio > high, jnp.round(height * high), width))
    h = jnp.where(found, h, jnp.where(ratio < low, jnp.round(width / low), height))
    top = jnp.where(
        found, jnp.floor(draws[:, 2 * tries] * (height - h + 1)), jnp.floor((height - h) / 2)
    )
    left = jnp.where(
        found, jnp.floor(draws[:, 2 * tries + 1] * (width - w + 1)), jnp.floor((width - w) / 2)
    )
    return jnp.stack([top, left, h, w], axis=1)


def centre_crop_boxes(sizes: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(N, 4) boxes of the evaluation transform in the images' own pixels: the shorter side
    resized to size / 0.875 and the centre `size` cut out, with torchvision's roundings (as
    `zoo.data.transforms.centre_crop`)."""
    height, width = (sizes[:, i].astype(jnp.float32) for i in (0, 1))
    shorter = eval_resize(min(size))
    tall = width <= height
    new_h = jnp.where(tall, jnp.floor(shorter * height / width), shorter)
    new_w = jnp.where(tall, shorter, jnp.floor(shorter * width / height))
    top, left = jnp.round((new_h - size[0]) / 2), jnp.round((new_w - size[1]) / 2)
    scale_h, scale_w = new_h / height, new_w / width  # Resized pixels per pixel.
    return jnp.stack([top / scale_h, left / scale_w, size[0] / scale_h, size[1] / scale_w], axis=1)


def resized_crops(
    images: jax.Array, sizes: jax.Array, key: jax.Array, size: tuple[int, int], *, random: bool
) -> jax.Array:
    """Images of any size, padded to (N, H, W, C) uint8 with their (height, width) `sizes`, cut
    to `size` by the ImageNet protocol: a random-resized crop and a flip (`random`), or the
    evaluation crop. The resize is Pillow's antialiased bilinear one (`bilinear_weights`), as
    on the host; the padding is never read."""
    draws = _crop_draws(key, images.shape[0]) if random else None
    boxes = _boxes(draws, sizes) if random else centre_crop_boxes(sizes, size)
    rows = bilinear_weights(boxes[:, 0], boxes[:, 2], size[0], sizes[:, 0], images.shape[1])
    cols = bilinear_weights(boxes[:, 1], boxes[:, 3], size[1], sizes[:, 1], images.shape[2])
    if random:  # Mirrored: the columns' weights reversed.
        cols = jnp.where(draws[:, -1, None, None] < 0.5, cols[:, ::-1], cols)
    resized = jnp.einsum("boh,bhwc,bpw->bopc", rows, images.astype(jnp.float32), cols)
    return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def bilinear_weights(
    start: jax.Array, length: jax.Array, out: int, valid: jax.Array, size: int
) -> jax.Array:
    """(N, out, size) weights that resize pixels [start, start + length) of an axis of `valid`
    pixels (of `size` stored) to `out`, as Pillow's `resize(..., BILINEAR, box=...)` does: a
    triangle filter widened by the downscale factor (antialiasing), cut at the image's edge
    and normalised to sum to 1."""
    scale = length / out
    support = jnp.maximum(scale, 1.0)[:, None, None]
    centres = start[:, None] + (jnp.arange(out) + 0.5) * scale[:, None]  # In source pixels.
    pixels = jnp.arange(size) + 0.5
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixels - centres[..., None]) / support)
    weights = jnp.where(jnp.arange(size) < valid[:, None, None], weights, 0.0)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)

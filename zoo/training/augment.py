"""On-device data augmentation inside the jitted step: of raw uint8 images, and of whole batches.

For images of any size held on the devices (padded), `resized_crops` is the ImageNet protocol
that `zoo.data.transforms` runs on the host for streamed ones: the same crop distribution and
resize filter, drawn from JAX keys instead of NumPy generators.

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
    n = sizes.shape[0]
    height, width = (sizes[:, i, None].astype(jnp.float32) for i in (0, 1))
    scale_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
    shape = (n, RANDOM_CROP_TRIES)
    area = (
        height
        * width
        * jax.random.uniform(
            scale_key, shape, minval=RANDOM_CROP_SCALE[0], maxval=RANDOM_CROP_SCALE[1]
        )
    )
    log_ratio = jnp.log(jnp.asarray(RANDOM_CROP_RATIO))
    aspect = jnp.exp(jax.random.uniform(ratio_key, shape, minval=log_ratio[0], maxval=log_ratio[1]))
    w, h = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits, axis=1)[:, None]
    w, h = (jnp.take_along_axis(x, first, axis=1)[:, 0] for x in (w, h))
    height, width = height[:, 0], width[:, 0]
    # No try fits: the whole image, cut to the nearest ratio in range, centred.
    ratio = width / height
    low, high = RANDOM_CROP_RATIO
    fallback_w = jnp.where(ratio > high, jnp.round(height * high), width)
    fallback_h = jnp.where(ratio < low, jnp.round(width / low), height)
    found = fits.any(axis=1)
    w, h = jnp.where(found, w, fallback_w), jnp.where(found, h, fallback_h)
    top = jnp.where(
        found,
        jnp.floor(jax.random.uniform(top_key, (n,)) * (height - h + 1)),
        jnp.floor((height - h) / 2),
    )
    left = jnp.where(
        found,
        jnp.floor(jax.random.uniform(left_key, (n,)) * (width - w + 1)),
        jnp.floor((width - w) / 2),
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
    evaluation crop. Resized with antialiased bilinear weights, as Pillow's resize on the host;
    the padding repeats each image's edge, so a box at the edge reads no foreign pixels."""
    crop_key, flip_key = jax.random.split(key)
    boxes = random_crop_boxes(crop_key, sizes) if random else centre_crop_boxes(sizes, size)
    out = jnp.asarray(size, jnp.float32)

    def crop(image: jax.Array, box: jax.Array) -> jax.Array:
        scale = out / box[2:]
        return jax.image.scale_and_translate(
            image.astype(jnp.float32),
            (*size, image.shape[-1]),
            (0, 1),
            scale,
            -box[:2] * scale,
            method="linear",
            antialias=True,
        )

    cropped = jnp.clip(jnp.round(jax.vmap(crop)(images, boxes)), 0, 255).astype(jnp.uint8)
    return random_flip(cropped, flip_key) if random else cropped

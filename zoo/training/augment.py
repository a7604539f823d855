"""On-device data augmentation inside the jitted step: of raw uint8 images, and of whole batches.

For images of any size held on the devices (padded), `resized_crops` is the ImageNet protocol
that `zoo.data.transforms` runs on the host for streamed ones: the same crop distribution and
resize filter, its random draws from JAX keys instead of NumPy generators.

Each `AUGMENTATIONS` function, and `RandomWarp` (random affine maps and elastic distortion),
maps (images (N, H, W, C), key) -> images of the same shape and dtype. Padding is with zeros in
raw pixel space, as torchvision's `RandomCrop(padding=...)` does: black for natural images, the
background for digits. `BatchMixing` (mixup, CutMix) then mixes the standardised batch and its
labels. Keys come from `fold_in` on the step number, so the augmentation of a step is the same
however training was interrupted and resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

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

# Where a warp after another augmentation takes its key from: `fold_in(key, WARP_KEY)`, apart
# from the key the first one uses and from mixing's `fold_in(key, 1)`.
WARP_KEY = 2
# The Gaussian that smooths an elastic field is cut off at this many sigmas, as SciPy's
# `gaussian_filter` (truncate=4.0) does.
GAUSSIAN_TRUNCATE = 4.0


@dataclasses.dataclass(frozen=True)
class RandomWarp:
    """A random affine map and elastic distortion of each image, resampled once, bilinearly.

    The affine part is torchvision's `RandomAffine` about the image centre: a rotation uniform
    in +-`rotate` degrees, a scale uniform in [1 - `zoom`, 1 + `zoom`], a shear parallel to the
    x axis uniform in +-`shear` degrees, and a translation uniform in +-`translate` of the
    height and of the width. The elastic part is Simard et al. 2003, "Best Practices for
    Convolutional Neural Networks Applied to Visual Document Analysis", Sec. 2: per image, a
    field of displacements uniform in [-1, 1] in each direction, smoothed by a Gaussian of
    `elastic_sigma` pixels (zero outside the image, cut off at 4 sigma, as SciPy's
    `gaussian_filter(mode="constant")`) and scaled by `elastic_alpha` pixels (their MNIST
    setting: sigma 4, alpha 34). An output pixel at p reads the input at A^-1 (p - t) + d(p)
    (about the centre), so one interpolation serves both parts; outside the image reads 0, the
    background of digits. All strengths 0 is the identity, exactly.
    """

    rotate: float = 0.0
    zoom: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    def __call__(self, images: jax.Array, key: jax.Array) -> jax.Array:
        n, h, w, _ = images.shape
        affine_key, elastic_key = jax.random.split(key)
        centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
        grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1)
        inverse, shift = self._affine(affine_key, n, (h, w))
        # (N, H, W, 2) source (y, x) of every output pixel.
        source = jnp.einsum("nij,nhwj->nhwi", inverse, grid - centre - shift[:, None, None])
        source = source + centre
        if self.elastic_alpha:
            source = source + self._elastic(elastic_key, n, (h, w))
        return _bilinear(images, source)

    def _affine(self, key: jax.Array, n: int, size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """(N, 2, 2) inverse linear maps in (y, x) order, and (N, 2) translations in pixels."""
        # One draw for all five parameters of an image, each uniform in +-its bound.
        bounds = jnp.array([self.rotate, self.zoom, self.shear, self.translate, self.translate])
        draws = jax.random.uniform(key, (n, 5), minval=-1.0, maxval=1.0) * bounds
        angle, shear = jnp.deg2rad(draws[:, 0]), jnp.deg2rad(draws[:, 2])
        scale = 1 + draws[:, 1]
        shift = draws[:, 3:] * jnp.array(size)
        cos, sin, tan = jnp.cos(angle), jnp.sin(angle), jnp.tan(shear)
        # In (y, x) coordinates the forward map is scale * rotation @ shearing: the x-shear
        # [[1, 0], [tan, 1]], then a rotation [[cos, -sin], [sin, cos]] (counter-clockwise on
        # the screen). Its inverse, written out: shearing^-1 @ rotation^T / scale.
        inverse = jnp.stack(
            [
                jnp.stack([cos, sin], -1),
                jnp.stack([-sin - tan * cos, cos - tan * sin], -1),
            ],
            -2,
        )
        return inverse / scale[:, None, None], shift

    def _elastic(self, key: jax.Array, n: int, size: tuple[int, int]) -> jax.Array:
        """(N, H, W, 2) smoothed random displacements in pixels."""
        h, w = size
        field = jax.random.uniform(key, (n, h, w, 2), minval=-1.0, maxval=1.0)
        rows, cols = gaussian_matrix(h, self.elastic_sigma), gaussian_matrix(w, self.elastic_sigma)
        return self.elastic_alpha * jnp.einsum("ij,njkc,lk->nilc", rows, field, cols)


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 matrix G with G @ v = v smoothed by a Gaussian of `sigma`: the
    kernel cut at `GAUSSIAN_TRUNCATE` sigma and normalised to sum 1, zeros beyond the ends."""
    radius = int(GAUSSIAN_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    distance = np.arange(size)[None, :] - np.arange(size)[:, None]
    taps = kernel[np.clip(distance + radius, 0, 2 * radius)]
    return np.where(np.abs(distance) <= radius, taps, 0).astype(np.float32)


def _bilinear(images: jax.Array, source: jax.Array) -> jax.Array:
    """`images` (N, H, W, C) read at `source` (N, H, W, 2) (y, x), bilinearly, 0 outside;
    rounded back to the images' dtype."""
    n, h, w, c = images.shape
    top_left = jnp.floor(source)
    fraction = source - top_left
    corner = top_left.astype(jnp.int32)
    values = images.astype(jnp.float32).reshape(n, h * w, c)
    result = jnp.zeros((n, h, w, c), jnp.float32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        y, x = corner[..., 0] + dy, corner[..., 1] + dx
        weight = (fraction[..., 0] if dy else 1 - fraction[..., 0]) * (
            fraction[..., 1] if dx else 1 - fraction[..., 1]
        )
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        flat = jnp.where(inside, y * w + x, 0).reshape(n, h * w, 1)
        read = jnp.take_along_axis(values, flat, axis=1).reshape(n, h, w, c)
        result = result + jnp.where(inside, weight, 0.0)[..., None] * read
    if jnp.issubdtype(images.dtype, jnp.integer):
        info = jnp.iinfo(images.dtype)
        result = jnp.clip(jnp.round(result), info.min, info.max)
    return result.astype(images.dtype)


def then(first: Augmentation | None, second: Augmentation) -> Augmentation:
    """`second` after `first` (if any): `first` takes the step's key as it would alone, so adding
    a warp leaves the first augmentation's draws as they were; `second` takes
    `fold_in(key, WARP_KEY)`."""
    if first is None:
        return second

    def augment(images: jax.Array, key: jax.Array) -> jax.Array:
        return second(first(images, key), jax.random.fold_in(key, WARP_KEY))

    return augment


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

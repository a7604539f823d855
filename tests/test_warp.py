"""`RandomWarp`: random affine maps and elastic distortion of raw images, inside the train step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from rich.console import Console

from zoo.training import augment, loop
from zoo.training.augment import RandomWarp, gaussian_matrix, then, translate
from zoo.training.config import TrainConfig
from zoo.training.pipeline import prepare_batch
from zoo.training.recipe import augmentation

SIZE = 29  # Odd: the centre (14, 14) is a pixel.
CENTRE = (SIZE - 1) / 2


def digits_like(count: int = 16, channels: int = 1, seed: int = 0) -> jax.Array:
    """Random uint8 strokes on black, (count, 28, 28, channels)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28, channels), np.uint8)
    images[:, 6:22, 6:22] = rng.integers(0, 256, (count, 16, 16, channels))
    return jnp.asarray(images)


def dot(dy: int, dx: int, count: int = 64) -> jax.Array:
    """`count` images of one bright pixel at (dy, dx) from the centre of a SIZE x SIZE frame."""
    images = np.zeros((count, SIZE, SIZE, 1), np.uint8)
    images[:, int(CENTRE) + dy, int(CENTRE) + dx] = 255
    return jnp.asarray(images)


def centroids(images: jax.Array) -> np.ndarray:
    """(N, 2) centre of mass (row, column) of each image's ink, relative to the frame's centre."""
    ink = np.asarray(images, np.float64)[..., 0]
    rows, cols = np.indices(ink.shape[1:])
    total = ink.sum(axis=(1, 2))
    return (
        np.stack([(ink * rows).sum(axis=(1, 2)) / total, (ink * cols).sum(axis=(1, 2)) / total], -1)
        - CENTRE
    )


WARP = RandomWarp(rotate=15, zoom=0.1, shear=10, translate=0.1, elastic_alpha=34)


def test_a_warp_keeps_shape_and_dtype_and_is_a_function_of_its_key():
    images = digits_like(channels=3)  # Grey images go through the other tests.
    warp = jax.jit(WARP)
    once, again = warp(images, jax.random.key(3)), warp(images, jax.random.key(3))
    assert once.shape == images.shape and once.dtype == jnp.uint8
    np.testing.assert_array_equal(once, again)
    other = warp(images, jax.random.key(4))
    assert not np.array_equal(once, other) and not np.array_equal(once, images)
    # Each image draws its own warp: two copies of one image come out differently.
    twins = warp(jnp.concatenate([images[:1], images[:1]]), jax.random.key(3))
    assert not np.array_equal(twins[0], twins[1])


def test_zero_strength_is_the_identity_exactly():
    images = digits_like(channels=3)
    np.testing.assert_array_equal(jax.jit(RandomWarp())(images, jax.random.key(0)), images)


def test_rotation_and_zoom_turn_and_scale_about_the_centre():
    turned = jax.jit(RandomWarp(rotate=30))(dot(0, 8), jax.random.key(0))
    radius = np.hypot(*centroids(turned).T)
    angle = np.degrees(np.arctan2(*centroids(turned).T))  # from the +x axis, rows down
    np.testing.assert_allclose(radius, 8, atol=0.15)  # Bilinear spreads the dot, not its centre.
    assert np.all(np.abs(angle) <= 30.5) and np.ptp(angle) > 30  # Both ways, within 30.
    scaled = centroids(jax.jit(RandomWarp(zoom=0.25))(dot(0, 8), jax.random.key(1)))
    np.testing.assert_allclose(scaled[:, 0], 0, atol=1e-6)  # Along its ray from the centre.
    assert np.all((scaled[:, 1] >= 8 * 0.75 - 0.05) & (scaled[:, 1] <= 8 * 1.25 + 0.05))
    assert np.ptp(scaled[:, 1]) > 2


def test_shear_moves_pixels_along_their_row_and_translation_moves_everything():
    sheared = centroids(jax.jit(RandomWarp(shear=20))(dot(6, 0), jax.random.key(2)))
    np.testing.assert_allclose(sheared[:, 0], 6, atol=1e-6)
    assert np.all(np.abs(sheared[:, 1]) <= 6 * np.tan(np.radians(20)) + 0.05)
    assert np.ptp(sheared[:, 1]) > 2
    shifted = centroids(jax.jit(RandomWarp(translate=0.1))(dot(0, 0), jax.random.key(3)))
    assert np.all(np.abs(shifted) <= 0.1 * SIZE + 0.05) and np.ptp(shifted) > 2


def test_the_elastic_field_is_smoothed_as_scipys_gaussian_filter_does():
    field = np.random.default_rng(0).uniform(-1, 1, (3, 28, 20)).astype(np.float32)
    for sigma in (1.0, 4.0, 8.0):  # 8: the kernel is wider than the image.
        rows, cols = gaussian_matrix(28, sigma), gaussian_matrix(20, sigma)
        for plane in field:
            expected = scipy.ndimage.gaussian_filter(plane, sigma, mode="constant", truncate=4.0)
            np.testing.assert_allclose(rows @ plane @ cols.T, expected, atol=1e-6)


def test_resampling_is_bilinear_with_zeros_outside():
    images = digits_like(count=4).astype(jnp.float32)
    sources = np.random.default_rng(1).uniform(-3, 31, (4, 28, 28, 2)).astype(np.float32)
    ours = np.asarray(jax.jit(augment._bilinear)(images, jnp.asarray(sources)))
    for image, source, mine in zip(np.asarray(images), sources, ours, strict=True):
        expected = scipy.ndimage.map_coordinates(
            image[..., 0], source.transpose(2, 0, 1), order=1, mode="grid-constant"
        )
        np.testing.assert_allclose(mine[..., 0], expected, atol=1e-3)


def test_elastic_displacements_are_smooth_and_alpha_pixels_times_the_smoothed_noise():
    warp = RandomWarp(elastic_alpha=34, elastic_sigma=4)
    field = np.asarray(
        jax.jit(warp._elastic, static_argnums=(1, 2))(jax.random.key(5), 512, (28, 28))
    )
    # Noise uniform in [-1, 1] (variance 1/3) through a normalised 2-D Gaussian kernel k has, away
    # from the borders, the standard deviation sqrt(sum(k^2) / 3); alpha scales it, in pixels.
    kernel = gaussian_matrix(57, 4.0)[28]
    expected = 34 * np.sqrt((kernel**2).sum() ** 2 / 3)  # Simard's setting: about 1.4 pixels.
    np.testing.assert_allclose(field[:, 12:16, 12:16].std(), expected, rtol=0.1)
    steps = np.abs(np.diff(field, axis=1)).mean()
    assert steps < 0.25 * np.abs(field).mean()  # Neighbours move together: a smooth field.
    distorted = jax.jit(warp)(digits_like(count=8), jax.random.key(5))
    assert np.mean(np.asarray(distorted) != np.asarray(digits_like(count=8))) > 0.2


def test_a_warp_after_the_shifts_leaves_the_shifts_draws_as_they_were():
    images, key = digits_like(), jax.random.key(7)
    warp = RandomWarp(rotate=10)
    both = jax.jit(then(translate, warp))(images, key)
    expected = jax.jit(lambda x, k: warp(translate(x, k), jax.random.fold_in(k, augment.WARP_KEY)))(
        images, key
    )
    np.testing.assert_array_equal(both, expected)
    assert then(None, warp) is warp


def test_the_config_builds_the_warp_after_the_data_sets_augmentation():
    config = TrainConfig(model="lenet5", augment=True, rotate=10, elastic_alpha=34)
    images, key = digits_like(), jax.random.key(1)
    warp = RandomWarp(rotate=10, elastic_alpha=34)
    np.testing.assert_array_equal(
        jax.jit(augmentation(config, "translate"))(images, key),
        jax.jit(then(translate, warp))(images, key),
    )
    assert augmentation(dataclasses.replace(config, augment=False), "translate") == warp
    assert augmentation(TrainConfig(model="lenet5", augment=True), "translate") is translate
    assert augmentation(TrainConfig(model="lenet5"), "translate") is None


def test_labels_pass_through_an_augmented_batch_unchanged():
    images = digits_like(count=32)
    labels = jnp.arange(32, dtype=jnp.int32) % 10
    rows = jnp.asarray(np.random.default_rng(0).permutation(32)[:16])
    batch = jax.jit(
        lambda rows, key: prepare_batch(
            {"image": images[rows], "label": labels[rows]},
            key,
            preprocessing=lambda x: x / 255.0,
            augmentation=WARP,
        )
    )(rows, jax.random.key(0))
    np.testing.assert_array_equal(batch["label"], labels[rows])
    assert not np.allclose(batch["image"], images[rows] / 255.0)


def test_the_warp_is_traced_once_into_the_compiled_step(tmp_path, monkeypatch):
    traced = []
    warp = RandomWarp.__call__

    def counting(self, images, key):
        traced.append(images.shape)
        return warp(self, images, key)

    monkeypatch.setattr(RandomWarp, "__call__", counting)
    settings = {
        "model": "mlp",
        "dataset": "synthetic",
        "epochs": 2,
        "batch_size": 32,
        "max_train_examples": 128,
        "registry": str(tmp_path / "registry"),
        "log": str(tmp_path / "log.jsonl"),
        "tensorboard": False,
    }
    loop.fit(
        TrainConfig(**settings, rotate=20, zoom=0.1, elastic_alpha=20),
        console=Console(quiet=True),
        save=False,
    )
    assert traced == [(32, 28, 28, 1)]  # Once, for 8 steps: compiled in, never retraced.


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rotate": -1}, r"rotate must be in \[0, 180\] degrees, got -1.0"),
        ({"zoom": 1.0}, r"zoom must be in \[0, 1\), got 1.0"),
        ({"shear": 90}, r"shear must be in \[0, 90\) degrees, got 90.0"),
        ({"translate": 1.5}, r"translate must be in \[0, 1\], got 1.5"),
        ({"elastic_alpha": -34}, "elastic_alpha must be >= 0"),
        ({"elastic_sigma": 0}, "elastic_sigma must be > 0, got 0.0"),
    ],
)
def test_warp_strengths_are_checked_when_the_config_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="lenet5", **settings)

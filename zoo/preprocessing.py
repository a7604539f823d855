"""From raw data-set images to a model's input: the one place normalisation lives.

A `Preprocessing` is recorded with every saved model, so `zoo.load(name).predict(raw_images)`
applies exactly what training applied: scale uint8 to [0, 1], zero-pad or resize to the model's
input size (MNIST's 28x28 is padded to LeNet-5's 32x32 as LeCun et al. did), repeat a grey channel
when the model wants three, then standardise with the training set's per-channel mean and std.

Models of natural images of any size (trained on an image folder or ImageNet, or imported from
torchvision) record a `crop_fraction`: a picture of any size is first cut to `source_shape` by the
ImageNet evaluation transform (shorter side resized to size / crop_fraction, centre crop:
`zoo.data.transforms.centre_crop`), and their mean and std are ImageNet's, as torchvision's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidValueError

# ImageNet's per-channel mean and std (torchvision's `Normalize` for its ImageNet weights): the
# normalisation of natural images of any size, so that imported and fine-tuned weights agree.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The evaluation transform's centre crop (224 of 256; `zoo.data.transforms.centre_crop`).
IMAGENET_CROP_FRACTION = 0.875


def check_raw(dtype: np.dtype, what: str) -> None:
    """Raises unless `dtype` is that of raw images, uint8 (0..255) as data sets give them: a
    float image would be scaled by 1/255 a second time, a negative value would wrap around."""
    if dtype != np.uint8:
        raise InvalidValueError(f"{what}: expected raw uint8 images (0..255), got {dtype}")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Raw `source_shape` images (uint8, 0..255) -> float `input_shape` model inputs.

    Attributes:
      source_shape: (H, W, C) of the raw images, as the data set gives them.
      input_shape: (H, W, C) the model takes.
      mean: per-channel mean of the training images, in [0, 1] units, after channel repeat.
      std: per-channel standard deviation, same units.
      crop_fraction: for images of any size, the evaluation transform's centre crop that cuts
        them to `source_shape` (0.875: the centre 224 of 256); None: images come in that shape.
    """

    source_shape: tuple[int, int, int]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float | None = None

    def __post_init__(self) -> None:
        src_c, dst_c = self.source_shape[-1], self.input_shape[-1]
        if src_c != dst_c and src_c != 1:
            raise InvalidValueError(
                f"cannot turn {src_c}-channel images into {dst_c}-channel inputs"
            )
        if len(self.mean) != dst_c or len(self.std) != dst_c:
            raise InvalidValueError(
                f"mean and std need {dst_c} entries, got {self.mean}, {self.std}"
            )
        if min(self.std) <= 0:
            raise InvalidValueError(f"std must be positive, got {self.std}")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise InvalidValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def __call__(self, images: np.ndarray | jax.Array) -> jax.Array:
        """(N, H, W[, C]) raw images -> (N, *input_shape) float32, standardised."""
        x = images if isinstance(images, jax.Array) else np.asarray(images)
        check_raw(x.dtype, "raw images")
        x = jnp.asarray(x)
        if x.ndim == 3 and self.source_shape[-1] == 1:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.source_shape):
            raise InvalidValueError(
                f"expected raw images of shape (N, {', '.join(map(str, self.source_shape))}), "
                f"got {tuple(x.shape)}"
            )
        x = x.astype(jnp.float32) / 255.0
        x = self._to_input_size(x)
        if x.shape[-1] != self.input_shape[-1]:
            x = jnp.repeat(x, self.input_shape[-1], axis=-1)
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

    @property
    def resizing(self) -> str | None:
        """How the images reach the input size: "zero-padded", "resized" (bilinear), or None.

        Zero-padding keeps the digit at its scale, as in LeCun et al. 1998, Sec. II-B; it is
        used whenever the input is larger by an even margin on both axes.
        """
        (sh, sw, _), (th, tw, _) = self.source_shape, self.input_shape
        if (sh, sw) == (th, tw):
            return None
        dh, dw = th - sh, tw - sw
        return "zero-padded" if dh >= 0 and dw >= 0 and dh % 2 == 0 == dw % 2 else "resized"

    def _to_input_size(self, x: jax.Array) -> jax.Array:
        (sh, sw, _), (th, tw, _) = self.source_shape, self.input_shape
        if self.resizing == "zero-padded":
            dh, dw = (th - sh) // 2, (tw - sw) // 2
            return jnp.pad(x, ((0, 0), (dh, dh), (dw, dw), (0, 0)))
        if self.resizing == "resized":
            return jax.image.resize(x, (x.shape[0], th, tw, x.shape[-1]), method="bilinear")
        return x

    def to_dict(self) -> dict[str, Any]:
        record = {k: v for k, v in dataclasses.asdict(self).items() if k != "crop_fraction"}
        record = {k: list(v) for k, v in record.items()}
        if self.crop_fraction is not None:  # Absent: what models of one image size record.
            record["crop_fraction"] = self.crop_fraction
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Preprocessing:
        shapes = ("source_shape", "input_shape", "mean", "std")
        return cls(
            **{k: tuple(record[k]) for k in shapes}, crop_fraction=record.get("crop_fraction")
        )

    @classmethod
    def imagenet(cls, input_shape: tuple[int, int, int]) -> Preprocessing:
        """Natural images of any size, cut to `input_shape` by the evaluation transform and
        standardised with ImageNet's mean and std (for a grey model, their averages)."""
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if input_shape[-1] == 1:
            mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
        return cls(tuple(input_shape), tuple(input_shape), mean, std, IMAGENET_CROP_FRACTION)

    @classmethod
    def fit(cls, raw_train_images: np.ndarray, input_shape: tuple[int, int, int]) -> Preprocessing:
        """Measures the per-channel mean and std of raw (N, H, W[, C]) training images."""
        x = np.asarray(raw_train_images, np.float64) / 255.0
        if x.ndim == 3:
            x = x[..., None]
        mean = x.mean(axis=(0, 1, 2))
        std = x.std(axis=(0, 1, 2))
        repeat = input_shape[-1] // x.shape[-1]
        return cls(
            source_shape=tuple(int(d) for d in x.shape[1:]),
            input_shape=tuple(input_shape),
            mean=tuple(float(m) for m in np.repeat(mean, repeat)),
            std=tuple(float(s) for s in np.repeat(std, repeat)),
        )

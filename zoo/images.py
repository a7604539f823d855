"""Raw images from files: read, then converted with PIL, the same way for every command.

A raw image is what a data set holds: uint8 (H, W, C) with C = 1 (grey) or 3 (RGB). `zoo predict`
and the pictures of `zoo plot` read their files here, so a file looks the same to both.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image

from zoo.errors import InvalidValueError

ImageSource = np.ndarray | str | os.PathLike


def raw_image(source: ImageSource) -> np.ndarray:
    """One raw uint8 image (H, W, 1 or 3) from an array, a .npy file or an image file.

    A .npy or array holds (H, W), (H, W, 1) or (H, W, 3) uint8 values; an image file (.png, .jpg,
    ...) is read with PIL, and anything but grey becomes RGB (alpha and palettes are dropped).
    """
    if isinstance(source, np.ndarray):
        return _checked(source, "the image array")
    path = Path(source)
    if path.suffix.lower() == ".npy":
        return _checked(np.load(path, allow_pickle=False), str(path))  # Never unpickle input.
    try:
        image = PIL.Image.open(path)
    except PIL.UnidentifiedImageError:
        raise InvalidValueError(f"{path}: not an image file PIL can read, nor a .npy") from None
    image = image if image.mode in ("L", "RGB") else image.convert("RGB")
    return _checked(np.asarray(image), str(path))


def converted(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw `image` as a raw image of `shape` (H, W, C): grey <-> RGB, then a bilinear resize."""
    height, width, channels = shape
    picture = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    picture = picture.convert("L" if channels == 1 else "RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), PIL.Image.Resampling.BILINEAR)
    return np.asarray(picture, np.uint8).reshape(shape)


def grey(image: np.ndarray) -> np.ndarray:
    """Raw `image` as (H, W) float32 intensities in [0, 1] (PIL's ITU-R 601 luma for colour)."""
    picture = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(picture.convert("L"), np.float32) / 255.0


def _checked(image: np.ndarray, what: str) -> np.ndarray:
    """`image` as (H, W, C) uint8 with C = 1 or 3, or a ValueError that says what it is."""
    if image.dtype != np.uint8:
        raise InvalidValueError(f"{what}: expected raw uint8 pixels (0..255), got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise InvalidValueError(
            f"{what}: expected one image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}"
        )
    return image

"""Raw images from files: read, then converted with PIL, the same way for every command.

A raw image is what a data set holds: uint8 (H, W, C) with C = 1 (grey) or 3 (RGB). `zoo predict`
and the pictures of `zoo plot` read their files here, so a file looks the same to both, and a bad
file is refused the same way: with an `InvalidValueError` (or `NotFoundError`) that names it.

Reading is bounded before anything is decoded. An image file declares its size in its header,
which PIL reads without decoding the pixels; more than `MAX_PIXELS` pixels is refused, since a
small compressed file can declare a huge picture (a 12 kB PNG can hold 10000x10000 pixels and
decode to gigabytes). A .npy file declares its dtype and shape in its header, which is checked
the same way against `MAX_NPY_VALUES` before its data is loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image

from zoo.errors import InvalidValueError, NotFoundError
from zoo.preprocessing import Preprocessing, check_raw

ImageSource = np.ndarray | str | os.PathLike

# The most pixels of any one image, from a file or an array: 4096 x 4096, above a 12-megapixel
# phone photo while the zoo's models take at most 224 x 224, and about a fifth of PIL's own alarm
# (89 M pixels, which only warns). Decoded, an RGB image this size is 48 MiB.
MAX_PIXELS = 4096 * 4096
# A .npy of raw images holds at most the values of the largest RGB image allowed (48 MiB of uint8,
# 64k MNIST digits).
MAX_NPY_VALUES = 3 * MAX_PIXELS
# Training images averaging below this intensity are light drawings on a dark background (MNIST
# 0.13, Fashion-MNIST 0.29); photo sets are not (CIFAR-10 0.47, ImageNet 0.45).
DARK_TRAINING_MEAN = 1 / 3
# An image whose border averages above this is on a light background: noise or a dark scene
# stays below it, paper and a white canvas above.
LIGHT_BORDER = 0.6


def raw_image(source: ImageSource) -> np.ndarray:
    """One raw uint8 image (H, W, 1 or 3) from an array, a .npy file or an image file.

    A .npy or array holds (H, W), (H, W, 1) or (H, W, 3) uint8 values; an image file (.png, .jpg,
    ...) is read with PIL, and anything but grey becomes RGB (alpha and palettes are dropped).
    """
    if isinstance(source, np.ndarray):
        return _checked(source, "the image array")
    path = Path(source)
    if is_npy(path):
        return _checked(read_npy(path), str(path))
    return _checked(read_image_file(path), str(path))


def is_npy(path: Path) -> bool:
    """Whether `path` names a .npy array file rather than an image file."""
    return path.suffix.lower() == ".npy"


def read_image_file(path: Path) -> np.ndarray:
    """The pixels of image file `path` as uint8 (H, W) grey or (H, W, 3) RGB, size checked first."""
    _check_file(path)
    with warnings.catch_warnings():
        # PIL's alarm fires only far above MAX_PIXELS, which the size check below refuses.
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        with _named_errors(path):
            image = PIL.Image.open(path)
    with image:
        _check_size(*image.size, str(path))
        with _named_errors(path):
            return np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))


@contextlib.contextmanager
def _named_errors(path: Path) -> Iterator[None]:
    """PIL's errors about a file, opening or decoding it, as one InvalidValueError naming it."""
    try:
        yield
    except PIL.UnidentifiedImageError:
        raise InvalidValueError(f"{path}: not an image file PIL can read, nor a .npy") from None
    except PIL.Image.DecompressionBombError as error:
        # Above twice PIL's own limit, at open; or a frame (of a GIF, say) larger than the header.
        raise InvalidValueError(
            f"{path}: too large to read ({error}); the zoo reads at most {MAX_PIXELS:,} pixels"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # A truncated or corrupt stream, or an oversized text chunk (PIL's MAX_TEXT_CHUNK).
        raise InvalidValueError(f"{path}: cannot decode the image ({error})") from None


def read_npy(path: Path) -> np.ndarray:
    """The uint8 array in .npy file `path`; its header's dtype and size are checked before loading.

    Never unpickles: an object array is refused by its dtype, and `allow_pickle` stays False.
    """
    _check_file(path)
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:  # Version 3 exists only for non-ASCII structured dtypes.
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(file)
    except ValueError as error:
        raise InvalidValueError(f"{path}: not a readable .npy file ({error})") from None
    check_raw(dtype, str(path))
    values = math.prod(shape)  # Python ints: a declared shape cannot overflow past the check.
    if values > MAX_NPY_VALUES:
        raise InvalidValueError(
            f"{path}: an array of shape {shape} ({values:,} values) is larger than the "
            f"{MAX_NPY_VALUES:,} the zoo reads (zoo.images.MAX_NPY_VALUES); split it"
        )
    try:
        return np.load(path, allow_pickle=False)  # Never unpickle what the user points at.
    except (ValueError, EOFError, OSError) as error:
        raise InvalidValueError(f"{path}: a truncated or corrupt .npy file ({error})") from None


def image_batch(images: np.ndarray, source_shape: tuple[int, int, int], what: str) -> np.ndarray:
    """Raw uint8 `images` as a batch (N, *source_shape): the one rule for what an array means.

    An array of the model's raw image shape (H, W, C), or (H, W) for grey, is one image; with a
    leading axis, (N, H, W, C) or (N, H, W), it is a batch. Anything else is an error naming the
    expected shapes; in particular an image of another size is not read as a batch of its rows.
    """
    height, width, channels = source_shape
    check_raw(images.dtype, what)
    one = [(height, width, channels)] + ([(height, width)] if channels == 1 else [])
    if images.shape in one:
        return images.reshape(1, *source_shape)
    if images.shape[1:] in one:
        if not len(images):
            raise InvalidValueError(f"{what}: holds no images (a batch of shape {images.shape})")
        return images.reshape(-1, *source_shape)
    ones = " or ".join(str(shape) for shape in one)
    batches = " or ".join(str(("N", *shape)).replace("'", "") for shape in one)
    raise InvalidValueError(
        f"{what}: expected one raw image {ones} or a batch {batches}, got {images.shape} "
        "(an image file, .png or .jpg, is converted and resized instead)"
    )


def on_training_background(
    images: np.ndarray, preprocessing: Preprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """Raw images (N, H, W, C) on the training set's background, and which ones were inverted.

    Digit models learn light strokes on black, and misclassify a black-on-white drawing with
    confidence. When the training images average below DARK_TRAINING_MEAN and an image's border
    (its outermost rows and columns) averages above LIGHT_BORDER, the image is on the opposite
    background and is inverted (255 - x). Photo models never invert.
    """
    if max(preprocessing.mean) >= DARK_TRAINING_MEAN:
        return images, np.zeros(len(images), bool)
    # (N, 2W + 2(H - 2), C): each border pixel once.
    border = np.concatenate(
        [images[:, 0], images[:, -1], images[:, 1:-1, 0], images[:, 1:-1, -1]], axis=1
    )
    light = border.mean(axis=(1, 2)) / 255.0 > LIGHT_BORDER
    return np.where(light[:, None, None, None], 255 - images, images), light


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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidValueError(f"{path}: a folder, not an image file or .npy")
    if not path.is_file():  # A device or a pipe could be read without end.
        raise InvalidValueError(f"{path}: not a regular file, as an image file or .npy is")


def _check_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise InvalidValueError(
            f"{what}: a {width}x{height} image ({width * height:,} pixels) is larger than "
            f"the {MAX_PIXELS:,} pixels the zoo reads (zoo.images.MAX_PIXELS); shrink it first"
        )


def _checked(image: np.ndarray, what: str) -> np.ndarray:
    """`image` as (H, W, C) uint8 with C = 1 or 3, or a ValueError that says what it is."""
    check_raw(image.dtype, what)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise InvalidValueError(
            f"{what}: expected one image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}"
        )
    _check_size(image.shape[1], image.shape[0], what)
    return image

"""The ImageNet protocol on the host: decode no more pixels than needed, then crop and resize.

- Training: a random-resized crop, then a left-right flip with probability 1/2 (Szegedy et al.
  2015, "Going deeper with convolutions", Sec. 6; torchvision's `RandomResizedCrop`): a box of
  8-100% of the image's area with aspect ratio 3/4-4/3 (log-uniform), drawn up to 10 times until
  it fits, else the largest centred box in that ratio range; resized to the model's input.
- Evaluation: the shorter side resized to size / 0.875 (256 for 224), then a centre crop of the
  size (torchvision's `Resize(256)` + `CenterCrop(224)`, with the same integer rounding).

Both are written as a box of the original image to be resized, which is what lets a JPEG be
decoded at a DCT scale of 1/2, 1/4 or 1/8 (libjpeg's scaled decoding): the smallest scale at which
the box still has at least the output's resolution. JPEGs go through simplejpeg (libjpeg-turbo),
which measured faster than Pillow's draft mode (bench/README.md, "Data loading"); other formats,
and JPEGs simplejpeg refuses (CMYK), through Pillow in full. The resize is Pillow's antialiased
bilinear one, as torchvision's on PIL images.

Images come out as uint8 (H, W, C), C = 3 (any mode converted to RGB, as torchvision's
`ImageFolder` loader does: alpha and palettes dropped, CMYK converted) or C = 1 for grey models.
Normalisation is the device's job (`zoo.preprocessing`). This module imports no JAX: it runs in
the data-loading worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import simplejpeg

from zoo.errors import InvalidValueError, NotFoundError
from zoo.images import MAX_PIXELS
from zoo.preprocessing import IMAGENET_CROP_FRACTION as CROP_FRACTION

RANDOM_CROP_SCALE = (0.08, 1.0)
RANDOM_CROP_RATIO = (3 / 4, 4 / 3)
RANDOM_CROP_TRIES = 10
# The extensions torchvision's `ImageFolder` reads (`IMG_EXTENSIONS`), in lower case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_JPEG_MAGIC = b"\xff\xd8"

# A file to read, or the encoded bytes of an image (a TFDS `Image` feature), or decoded pixels.
Encoded = str | os.PathLike | bytes | np.ndarray


@dataclasses.dataclass(frozen=True)
class Box:
    """A region of an image, in pixels of the full image: rows [top, top + height), columns
    [left, left + width). Fractional for the scaled decodes."""

    top: float
    left: float
    height: float
    width: float

    def pil(self, scale: tuple[float, float], size: tuple[int, int]) -> tuple[float, ...]:
        """(left, top, right, bottom) in an image scaled by `scale` (x, y) to `size` (W, H)."""
        (x, y), (width, height) = scale, size
        return (
            self.left * x,
            self.top * y,
            min(width, (self.left + self.width) * x),
            min(height, (self.top + self.height) * y),
        )


def random_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = RANDOM_CROP_SCALE,
    ratio: tuple[float, float] = RANDOM_CROP_RATIO,
) -> Box:
    """torchvision's `RandomResizedCrop.get_params`, drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RANDOM_CROP_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Box(top, left, h, w)
    # The fallback: the whole image, cut to the nearest ratio in range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter`, as torchvision's `Resize(int)` rounds."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def eval_resize(size: int, crop_fraction: float = CROP_FRACTION) -> int:
    """The shorter side the evaluation protocol resizes to before its centre crop (256 for 224)."""
    return int(size / crop_fraction)


def random_resized_crop(
    source: Encoded,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    channels: int = 3,
    what: str | None = None,
) -> np.ndarray:
    """The training transform: a random-resized crop to `size` (H, W), flipped with p = 1/2."""
    with _named_errors(source, what) as name:
        decoder = _Decoder(source, name, channels)
        box = random_crop_box(decoder.width, decoder.height, rng)
        image = decoder.crop(box, size)
        flip = rng.random() < 0.5
    return image[:, ::-1] if flip else image  # A view: batching copies it anyway.


def centre_crop(
    source: Encoded,
    size: tuple[int, int],
    *,
    crop_fraction: float = CROP_FRACTION,
    channels: int = 3,
    what: str | None = None,
) -> np.ndarray:
    """The evaluation transform: the shorter side resized to size / `crop_fraction`, then the
    centre `size` (H, W) cut out, as torchvision's `Resize` + `CenterCrop` round."""
    out_h, out_w = size
    with _named_errors(source, what) as name:
        decoder = _Decoder(source, name, channels)
        new_w, new_h = resized_size(
            decoder.width, decoder.height, eval_resize(min(size), crop_fraction)
        )
        image = decoder.resize((new_w, new_h))
    top, left = round((new_h - out_h) / 2), round((new_w - out_w) / 2)
    if top < 0 or left < 0:  # A crop fraction above 1 leaves a side short of the size.
        raise InvalidValueError(f"crop_fraction must be at most 1, got {crop_fraction}")
    return np.ascontiguousarray(image[top : top + out_h, left : left + out_w])


def decode_full(source: Encoded, *, channels: int = 3, what: str | None = None) -> np.ndarray:
    """The whole image, decoded at full size, as uint8 (H, W, channels)."""
    with _named_errors(source, what) as name:
        decoder = _Decoder(source, name, channels)
        return decoder.resize((decoder.width, decoder.height))


def image_size(source: Encoded, what: str | None = None) -> tuple[int, int]:
    """(width, height) from the file's header, checked against `MAX_PIXELS`; nothing decoded."""
    with _named_errors(source, what) as name:
        decoder = _Decoder(source, name, 3)
        return decoder.width, decoder.height


def is_image_file(name: str) -> bool:
    """Whether a file name has one of the image extensions `ImageFolder` reads."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _Decoder:
    """One encoded image: its size from the header, then pixels at the scale a box needs."""

    def __init__(self, source: Encoded, name: str, channels: int) -> None:
        self.name, self.channels = name, channels
        self.pixels: np.ndarray | None = None
        self.data: bytes | None = None
        if isinstance(source, np.ndarray):
            self.pixels = _as_channels(source, channels, name)
            self.height, self.width = self.pixels.shape[:2]
        else:
            self.data = _read(source, name) if not isinstance(source, bytes) else source
            self.height, self.width = self._header()
        if self.width * self.height > MAX_PIXELS:
            raise InvalidValueError(
                f"{name}: a {self.width}x{self.height} image ({self.width * self.height:,} "
                f"pixels) is larger than the {MAX_PIXELS:,} pixels the zoo reads "
                "(zoo.images.MAX_PIXELS); shrink it first"
            )

    def _header(self) -> tuple[int, int]:
        if self._is_jpeg():
            with contextlib.suppress(ValueError):
                height, width, _, _ = simplejpeg.decode_jpeg_header(self.data)
                return height, width
        with self._pil() as image:
            return image.size[1], image.size[0]

    def _is_jpeg(self) -> bool:
        return self.data is not None and self.data[:2] == _JPEG_MAGIC

    @contextlib.contextmanager
    def _pil(self) -> Iterator[PIL.Image.Image]:
        with warnings.catch_warnings():
            # Pillow's own alarm fires far above MAX_PIXELS, which the size check refuses.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(self.data))
        with image:
            yield image

    def crop(self, box: Box, size: tuple[int, int]) -> np.ndarray:
        """`box` of the image resized to `size` (H, W), decoded at the smallest scale that keeps
        the box at least `size`."""
        out_h, out_w = size
        least = (
            math.ceil(self.width * out_w / box.width),
            math.ceil(self.height * out_h / box.height),
        )
        image = self._decoded(least)
        scale = (image.size[0] / self.width, image.size[1] / self.height)
        return self._array(image.resize((out_w, out_h), _BILINEAR, box=box.pil(scale, image.size)))

    def resize(self, size: tuple[int, int]) -> np.ndarray:
        """The whole image resized to `size` (W, H); no resize when it has that size already."""
        image = self._decoded(size)
        if image.size != size:
            image = image.resize(size, _BILINEAR)
        return self._array(image)

    def _decoded(self, least: tuple[int, int]) -> PIL.Image.Image:
        """The image at the smallest available scale of at least `least` (W, H) pixels, in the
        mode the output has."""
        mode = "RGB" if self.channels == 3 else "L"
        if self.pixels is not None:
            return PIL.Image.fromarray(self.pixels[..., 0] if self.channels == 1 else self.pixels)
        if self._is_jpeg():
            try:
                pixels = simplejpeg.decode_jpeg(
                    self.data,
                    "RGB" if self.channels == 3 else "GRAY",
                    min_width=least[0],
                    min_height=least[1],
                )
            except ValueError:  # CMYK, or a stream libjpeg-turbo calls corrupt: Pillow says which.
                pass
            else:
                return PIL.Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels)
        with self._pil() as image:
            image.load()
            return _converted(image, mode)

    def _array(self, image: PIL.Image.Image) -> np.ndarray:
        array = np.asarray(image, np.uint8)
        return array[..., None] if array.ndim == 2 else array


_BILINEAR = PIL.Image.Resampling.BILINEAR


def _converted(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """`image` in `mode` ("RGB" or "L"); 16-bit and float greys are scaled to 8 bits first."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, np.float64)
        top = 1.0 if image.mode == "F" and pixels.max() <= 1 else 65535.0
        image = PIL.Image.fromarray(np.clip(pixels / top * 255 + 0.5, 0, 255).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


def _as_channels(pixels: np.ndarray, channels: int, name: str) -> np.ndarray:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise InvalidValueError(
            f"{name}: expected uint8 (H, W[, C]) pixels, got {pixels.dtype} {pixels.shape}"
        )
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.shape[-1] == channels:
        return pixels
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(pixels.shape[-1])
    if mode is None:
        raise InvalidValueError(f"{name}: images of {pixels.shape[-1]} channels cannot be read")
    image = PIL.Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    converted = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    return converted[..., None] if converted.ndim == 2 else converted


def _read(path: str | os.PathLike, name: str) -> bytes:
    path = Path(path)
    if path.is_dir():
        raise InvalidValueError(f"{name}: a folder, not an image file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{name}: no such file (was it moved or deleted?)") from None
    except OSError as error:  # Permissions, a dead network mount: not the image's fault.
        raise InvalidValueError(f"{name}: cannot be read ({error.strerror or error})") from None


@contextlib.contextmanager
def _named_errors(source: Encoded, what: str | None) -> Iterator[str]:
    """Any decoding failure as one `InvalidValueError` that names the file (or `what`)."""
    name = what or (str(source) if isinstance(source, str | os.PathLike) else "an image")
    try:
        yield name
    except (InvalidValueError, NotFoundError):
        raise
    except PIL.UnidentifiedImageError:
        raise InvalidValueError(f"{name}: not an image Pillow can read (corrupt?)") from None
    except PIL.Image.DecompressionBombError as error:
        raise InvalidValueError(f"{name}: too large to read ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidValueError(
            f"{name}: cannot decode the image ({error}); truncated or corrupt?"
        ) from None

"""`zoo.images`: files are refused by their declared size before decoding, bad files by name."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from zoo.errors import InvalidValueError, NotFoundError
from zoo.images import (
    DARK_TRAINING_MEAN,
    MAX_NPY_VALUES,
    MAX_PIXELS,
    image_batch,
    on_training_background,
    raw_image,
    read_npy,
)
from zoo.preprocessing import Preprocessing

DIGITS = Preprocessing((28, 28, 1), (32, 32, 1), (0.13,), (0.31,))
PHOTOS = Preprocessing((32, 32, 3), (32, 32, 3), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(path: Path, width: int, height: int, *extra_chunks: bytes) -> Path:
    """A valid PNG header for a 1-bit `width` x `height` image, followed by one row of data.

    Tens of bytes that declare any size: what the size check must refuse without decoding.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + -(-width // 8)))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", row)
        + png_chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit's case: a real 10000x10000 1-bit PNG, 12 kB on disk, 100 M pixels decoded."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    PIL.Image.new("1", (10_000, 10_000)).save(path)
    assert path.stat().st_size < 100_000
    return path


def test_a_decompression_bomb_is_refused_by_its_declared_size(bomb):
    with pytest.raises(InvalidValueError) as caught:
        raw_image(bomb)
    message = str(caught.value)
    assert str(bomb) in message and "10000x10000" in message and f"{MAX_PIXELS:,}" in message


@pytest.mark.parametrize(
    "size",
    [
        (4097, 4096),  # just above the zoo's limit
        (30_000, 4_000),  # above PIL's warning (89 M pixels)
        (100_000, 100_000),  # above PIL's own refusal (179 M pixels): DecompressionBombError
    ],
)
def test_any_declared_size_above_the_limit_is_refused_before_decoding(tmp_path, size):
    path = png_declaring(tmp_path / "declared.png", *size)
    with pytest.raises(InvalidValueError, match=f"{path}: .*{MAX_PIXELS:,} pixels"):
        raw_image(path)


def test_one_image_in_a_npy_or_an_array_has_the_same_limit(tmp_path):
    np.save(tmp_path / "tall.npy", np.zeros((4097, 4096), np.uint8))  # fewer than MAX_NPY_VALUES
    with pytest.raises(InvalidValueError, match=rf"tall\.npy: a 4096x4097 image .*{MAX_PIXELS:,}"):
        raw_image(tmp_path / "tall.npy")
    with pytest.raises(InvalidValueError, match=rf"the image array: .*{MAX_PIXELS:,}"):
        raw_image(np.zeros((1, MAX_PIXELS + 1, 3), np.uint8))


def test_an_image_at_the_limit_is_read(tmp_path):
    path = tmp_path / "limit.png"
    PIL.Image.new("L", (MAX_PIXELS // 1024, 1024), 200).save(path)
    assert raw_image(path).shape == (1024, MAX_PIXELS // 1024, 1)


def test_bad_image_files_are_named_errors(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    PIL.Image.fromarray(noise).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.png").write_text("not a picture")

    with pytest.raises(InvalidValueError, match=r"truncated\.png: cannot decode the image"):
        raw_image(tmp_path / "truncated.png")
    with pytest.raises(InvalidValueError, match=r"folder\.png: a folder, not an image file"):
        raw_image(tmp_path / "folder.png")
    with pytest.raises(NotFoundError, match=r"missing\.png: no such file"):
        raw_image(tmp_path / "missing.png")
    if hasattr(os, "mkfifo"):  # PIL would wait forever on a pipe nothing writes to.
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(InvalidValueError, match=r"pipe\.png: not a regular file"):
            raw_image(tmp_path / "pipe.png")
    with pytest.raises(InvalidValueError, match=r"text\.png: not an image file PIL can read"):
        raw_image(tmp_path / "text.png")
    # A 100 kB text chunk that inflates to 100 MB: PIL refuses it while opening the file.
    comment = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 100_000_000))
    png_declaring(tmp_path / "text-bomb.png", 8, 8, comment)
    with pytest.raises(InvalidValueError, match=r"text-bomb\.png: cannot decode the image"):
        raw_image(tmp_path / "text-bomb.png")


def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    """A .npy header declaring `shape` with no data after it."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
    return path


def test_npy_files_are_checked_by_their_header_and_named(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    npy_header_only(tmp_path / "huge.npy", (MAX_NPY_VALUES + 1,))
    npy_header_only(tmp_path / "overflow.npy", (2**32, 2**32))  # 2**64 values wrap in int64
    npy_header_only(tmp_path / "truncated.npy", (10, 28, 28))
    np.save(tmp_path / "float.npy", np.zeros((8, 8), np.float32))

    for file, message in [
        ("objects.npy", "expected raw uint8 images \\(0..255\\), got object"),
        ("text.npy", "not a readable .npy file"),
        ("empty.npy", "not a readable .npy file"),
        ("huge.npy", f"an array of shape .* larger than the {MAX_NPY_VALUES:,} the zoo reads"),
        ("overflow.npy", f"an array of shape .* larger than the {MAX_NPY_VALUES:,} the zoo reads"),
        ("truncated.npy", "a truncated or corrupt .npy file"),
        ("float.npy", "expected raw uint8 images \\(0..255\\), got float32"),
    ]:
        with pytest.raises(InvalidValueError, match=f"{tmp_path / file}: {message}"):
            read_npy(tmp_path / file)
    with pytest.raises(NotFoundError, match=r"missing\.npy: no such file"):
        read_npy(tmp_path / "missing.npy")


@pytest.mark.parametrize(
    ("source_shape", "shape", "count"),
    [
        ((28, 28, 1), (28, 28), 1),
        ((28, 28, 1), (28, 28, 1), 1),
        ((28, 28, 1), (5, 28, 28), 5),
        ((28, 28, 1), (5, 28, 28, 1), 5),
        ((32, 32, 3), (32, 32, 3), 1),
        ((32, 32, 3), (4, 32, 32, 3), 4),
        ((32, 32, 3), (40, 40, 3), None),  # an RGB image of another size, not 40 rows
        ((32, 32, 3), (32, 32), None),
        ((28, 28, 1), (28, 28, 3), None),
        ((28, 28, 1), (2, 3, 28, 28), None),
    ],
)
def test_an_array_is_one_image_or_a_batch_by_the_models_raw_shape(source_shape, shape, count):
    images = np.zeros(shape, np.uint8)
    if count is None:
        expected = rf"x\.npy: expected one raw image \({source_shape[0]}, .* or a batch \(N, "
        with pytest.raises(InvalidValueError, match=expected + f".*got {re.escape(str(shape))}"):
            image_batch(images, source_shape, "x.npy")
    else:
        assert image_batch(images, source_shape, "x.npy").shape == (count, *source_shape)


def test_light_backgrounds_are_inverted_for_dark_trained_models_only():
    dark = np.zeros((28, 28, 1), np.uint8)
    dark[8:20, 12:16] = 255  # a light stroke on black, as in MNIST
    noise = np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8)
    batch = np.stack([dark, 255 - dark, noise])

    matched, inverted = on_training_background(batch, DIGITS)

    assert inverted.tolist() == [False, True, False]
    np.testing.assert_array_equal(matched, np.stack([dark, dark, noise]))
    assert max(PHOTOS.mean) >= DARK_TRAINING_MEAN
    white_photo = np.full((2, 32, 32, 3), 240, np.uint8)
    kept, inverted = on_training_background(white_photo, PHOTOS)
    assert not inverted.any() and kept is white_photo

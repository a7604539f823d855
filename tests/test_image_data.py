"""Data sets by name or path: image folders, a TFDS set built here, the ImageNet transforms.

Every image is made here: mnist5k digits written as PNG, JPEG, BMP and WebP files at many sizes
and modes, and the photos that matplotlib and scikit-learn ship. Nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import jax
import matplotlib
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_sample_images

from zoo.data import load_dataset, open_dataset, read_dataset
from zoo.data.folder import held_out_rows
from zoo.data.sampling import BatchPlan, CentreCrop, RandomResizedCrop, TrainReader
from zoo.data.transforms import centre_crop, image_size, random_resized_crop
from zoo.training import augment

# Class folder names whose sorted order is not the digits' order (ImageFolder sorts names).
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (extension, mode) of the files written, in turn: every format and mode the issue names.
FORMATS = (
    (".png", "L"),
    (".jpg", "RGB"),
    (".bmp", "RGB"),
    (".webp", "RGB"),
    (".png", "RGBA"),
    (".png", "P"),
    (".jpg", "CMYK"),
    (".png", "I;16"),
    (".JPEG", "L"),
    (".png", "LA"),
)
PHOTOS = (
    Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    *map(Path, load_sample_images().filenames),
)


def write_image(path: Path, digit: np.ndarray, size: int, mode: str) -> None:
    """A 28x28 grey digit resized to `size` and saved in `mode` at `path`."""
    image = PIL.Image.fromarray(digit[..., 0]).resize((size, size + size % 7))
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    image.save(path)


def write_digit_folder(
    root: Path, digits, per_class: int, *, held_out: int = 0, classes: int = 10
) -> Path:
    """`root/train/NAME/*` (and `root/val/NAME/*` with `held_out`), digits of every class in
    every format, mode and size in turn; plus files that are not images."""
    count = 0
    for label in range(classes):
        images = digits.images[digits.labels == label]
        for split, number in (("train", per_class), ("val", held_out)):
            if not number:
                continue
            folder = root / split / DIGIT_NAMES[label]
            folder.mkdir(parents=True)
            for i in range(number):
                extension, mode = FORMATS[count % len(FORMATS)]
                image = images[i if split == "train" else per_class + i]
                write_image(folder / f"{i}{extension}", image, 20 + count % 25, mode)
                count += 1
    (root / "train" / DIGIT_NAMES[0] / "README.txt").write_text("not an image")
    (root / "train" / DIGIT_NAMES[1] / ".DS_Store").write_bytes(b"\0\0")
    return root


@pytest.fixture(scope="module")
def digits(mnist5k_dir: Path):
    return load_dataset("mnist5k", data_dir=mnist5k_dir).train


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), digits, 4, held_out=2)


def test_a_folder_lists_as_torchvisions_image_folder_does(digit_folder):
    from torchvision.datasets import ImageFolder

    source = open_dataset(f"folder:{digit_folder}")
    reference = ImageFolder(str(digit_folder / "train"))
    assert source.class_names == tuple(reference.classes) == tuple(sorted(DIGIT_NAMES))
    assert list(zip(source.train.paths, source.train.labels.tolist(), strict=True)) == [
        (path, label) for path, label in reference.samples
    ]
    held_out = ImageFolder(str(digit_folder / "val"))
    assert [source.test[i][1] for i in range(len(source.test))] == held_out.targets
    assert source.image_shape is None and source.num_classes == 10
    assert source.summary == (
        f"{digit_folder}: 10 classes, 40 training and 20 held-out images (val/); "
        "skipped 2 files that are not images"
    )
    path, (height, width) = source.train.paths[0], source.train_sizes[0]
    assert PIL.Image.open(path).size == (width, height)


def test_every_format_and_mode_reads_as_rgb_or_grey_at_any_size(digit_folder, digits):
    source = open_dataset(f"folder:{digit_folder}")
    rng = np.random.default_rng(0)
    modes = set()
    for path in source.train.paths:
        modes.add((Path(path).suffix, PIL.Image.open(path).mode))
        rgb = centre_crop(path, (16, 16))
        grey = random_resized_crop(path, (12, 12), rng, channels=1)
        assert (rgb.shape, rgb.dtype, grey.shape) == ((16, 16, 3), np.uint8, (12, 12, 1)), path
        # A digit, light on a dark background, whatever the mode (16 bits scaled, not clipped).
        assert rgb.max() > 100 and 0.02 < rgb.mean() / 255 < 0.5, path
    assert modes == set(FORMATS)


def test_a_folder_without_split_folders_gets_a_seeded_stratified_held_out_split(tmp_path, digits):
    root = write_digit_folder(tmp_path / "d", digits, 12, classes=3)
    flat = tmp_path / "flat"
    (root / "train").rename(flat)
    source = open_dataset(f"folder:{flat}")
    again = open_dataset(f"folder:{flat}")
    assert source.test.paths == again.test.paths  # Fixed: data, not training randomness.
    assert not set(source.train.paths) & set(source.test.paths)
    assert np.bincount(source.test.labels).tolist() == [1, 1, 1]  # 10% of 12, rounded
    assert len(source.train) == 33 and "a seeded 10% of each class" in source.summary
    train, held = held_out_rows(np.repeat([0, 1], [2, 30]), 0.1, seed=0)
    assert np.bincount(np.repeat([0, 1], [2, 30])[held]).tolist() == [1, 3]
    assert len(train) + len(held) == 32


def test_a_tfds_set_built_here_reads_by_name_like_a_prepared_public_one(tmp_path):
    builder = build_photo_set(tmp_path)
    for name in ("zoo_test_photos", "zoo_test_photos:1.0.0"):
        source = open_dataset(name, data_dir=tmp_path)
        assert (source.name, source.class_names) == ("zoo_test_photos", ("cat", "dog", "emu"))
        assert (len(source.train), len(source.test), source.image_shape) == (12, 6, None)
        assert isinstance(source.train[0][0], bytes)  # Decoded in the workers, not by TFDS.
    assert source.device_bytes((32, 32), 3) is None  # Sizes unknown: it streams.
    held = read_dataset(source, (24, 24), 3)
    assert held.test.images.shape == (6, 24, 24, 3) and held.train.sizes.shape == (12, 2)
    sizes = {tuple(s) for s in held.train.sizes.tolist()}
    assert len(sizes) > 6 and held.train.images.shape[1:3] == tuple(np.max(list(sizes), axis=0))
    assert builder.info.features["label"].names == ["cat", "dog", "emu"]


class ZooTestPhotos(tfds.core.GeneratorBasedBuilder):
    """Photos of any size as encoded JPEG and PNG bytes, with named classes, no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=["cat", "dog", "emu"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager
        return {"train": self._generate_examples(0, 12), "test": self._generate_examples(12, 6)}

    def _generate_examples(self, first: int, count: int):
        photo = PIL.Image.open(PHOTOS[0]).convert("RGB")
        for i in range(first, first + count):
            image = photo.resize((20 + 3 * i, 30 + 2 * i)).rotate(90 * (i % 3))
            encoded = io.BytesIO()
            image.save(encoded, format="PNG" if i % 2 else "JPEG")
            yield i, {"image": encoded.getvalue(), "label": i % 3}


def build_photo_set(data_dir: Path) -> tfds.core.DatasetBuilder:
    builder = ZooTestPhotos(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def test_the_training_transform_is_a_function_of_seed_epoch_and_position(digit_folder):
    source = open_dataset(f"folder:{digit_folder}")
    plan = BatchPlan(seed=3, num_examples=len(source.train), batch_size=8, rows=tuple(range(8)))
    reader = TrainReader(plan, source.train, RandomResizedCrop((16, 16), 3))
    first = [reader(p)["image"] for p in range(6)]
    again = TrainReader(plan, source.train, RandomResizedCrop((16, 16), 3))
    for position in (5, 0, 3):  # Any order, any reader: the same example, the same crop.
        np.testing.assert_array_equal(again(position)["image"], first[position])
    next_epoch = reader(plan.steps_per_epoch * plan.local_batch)["image"]
    assert all(next_epoch.shape == f.shape for f in first)
    # Each epoch visits every training image once, in a new order.
    epochs = [
        [reader(e * plan.steps_per_epoch * 8 + p)["label"] for p in range(40)] for e in (0, 1)
    ]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(source.train.labels.tolist())
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_the_evaluation_transform_matches_torchvisions_reference(tmp_path, extension):
    """PNG: the same pixels as torchvision's Resize(256) + CenterCrop(224) on PIL images. JPEG:
    decoded at a reduced DCT scale first (libjpeg's 1/2, 1/4, 1/8), which differs from a full
    decode resized by Pillow by a few levels on average."""
    import torchvision.transforms as T

    reference = T.Compose([T.Resize(256), T.CenterCrop(224)])
    for i, photo in enumerate(PHOTOS):
        path = tmp_path / f"{i}{extension}"
        PIL.Image.open(photo).convert("RGB").resize((620 + 90 * i, 480 + 70 * i)).save(path)
        ours = centre_crop(path, (224, 224)).astype(np.int32)
        theirs = np.asarray(reference(PIL.Image.open(path).convert("RGB")), np.int32)
        if extension == ".png":
            np.testing.assert_array_equal(ours, theirs)
        else:
            assert np.abs(ours - theirs).mean() < 3, path


def test_imported_weights_predict_the_same_on_our_evaluation_transform(tmp_path):
    """ResNet-18 with torchvision's initialisation (seeded; no weights are downloaded), converted,
    on our evaluation transform and normalisation vs torchvision's on the same JPEGs: the same
    top-1 class for every photo, logits within 2% of their range (the JPEG decode differs)."""
    import torch
    import torchvision
    import torchvision.transforms as T

    from zoo.convert.torchvision import IMAGENET_PREPROCESSING, convert_state_dict

    torch.manual_seed(0)
    torch_model = torchvision.models.resnet18(num_classes=10).eval()
    converted = convert_state_dict("resnet18", torch_model.state_dict())
    paths = []
    for i, photo in enumerate(PHOTOS):
        paths.append(tmp_path / f"{i}.jpg")
        PIL.Image.open(photo).convert("RGB").save(paths[-1], quality=95)
    reference = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std),
        ]
    )
    with torch.no_grad():
        batch = torch.stack([reference(PIL.Image.open(p).convert("RGB")) for p in paths])
        theirs = torch_model(batch).numpy()
    raw = np.stack([centre_crop(p, (224, 224)) for p in paths])
    ours = np.asarray(
        converted.module.apply(converted.variables, IMAGENET_PREPROCESSING(raw), train=False)
    )
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    spread = theirs.max(-1, keepdims=True) - theirs.min(-1, keepdims=True)
    assert np.all(np.abs(ours - theirs) < 0.02 * spread)


def test_crops_on_the_devices_follow_the_host_protocol():
    sizes = jax.numpy.array([[30, 50], [64, 20], [7, 9], [100, 100]] * 64)
    boxes = np.asarray(augment.random_crop_boxes(jax.random.key(0), sizes))
    top, left, h, w = boxes.T
    heights, widths = np.asarray(sizes).T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= heights) & (left + w <= widths))
    area = h * w / (heights * widths)
    assert area.min() < 0.2 and area.max() > 0.8 and np.all(area <= 1)
    # The evaluation crop on the devices: the host's, up to rounding.
    photo = np.asarray(PIL.Image.open(PHOTOS[1]).convert("RGB").resize((300, 200)))
    padded = np.pad(photo, ((0, 40), (0, 10), (0, 0)), constant_values=255)[None]
    on_device = augment.resized_crops(
        padded, jax.numpy.array([[200, 300]]), jax.random.key(0), (64, 64), random=False
    )
    on_host = centre_crop(photo, (64, 64))
    difference = np.abs(np.asarray(on_device[0], np.int32) - on_host.astype(np.int32))
    assert difference.max() <= 1 and difference.mean() < 0.2  # Pillow rounds in fixed point.


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda root: (root / "train" / "zero" / "0.png").write_bytes(b"garbage"),
            "train/zero/0.png: not an image Pillow can read",
        ),
        (
            lambda root: PIL.Image.new("1", (5000, 4000)).save(root / "train" / "one" / "big.png"),
            "train/one/big.png: a 5000x4000 image (20,000,000 pixels) is larger than",
        ),
        (lambda root: (root / "train" / "empty").mkdir(), "train/empty: an empty class folder"),
        (
            lambda root: os.symlink(root / "train" / "loop", root / "train" / "loop"),
            "train/loop: a symlink loop",
        ),
        (
            lambda root: os.symlink(root / "train", root / "train" / "two" / "up"),
            "a symlink loop (a folder inside itself)",
        ),
        (
            lambda root: (root / "val" / "eleven").mkdir(parents=True),
            "classes eleven are not among the training classes",
        ),
    ],
    ids=["corrupt", "too large", "empty class", "self link", "link to parent", "unknown class"],
)
def test_bad_folders_are_one_line_errors_naming_the_file(tmp_path, digits, make, message):
    root = write_digit_folder(tmp_path / "d", digits, 2, classes=3)
    make(root)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        open_dataset(f"folder:{root}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda root: root.mkdir(), ValueError, "has no class folders: expected"),
        (lambda root: None, FileNotFoundError, "no such folder"),
        (lambda root: root.write_text("x"), NotADirectoryError, "is a file, not a folder"),
    ],
    ids=["no images", "missing", "a file"],
)
def test_a_folder_that_holds_no_images_is_a_one_line_error(tmp_path, make, error, message):
    make(tmp_path / "d")
    with pytest.raises(error, match=message):
        open_dataset(f"folder:{tmp_path / 'd'}")


def test_a_truncated_image_fails_when_decoded_naming_the_file(tmp_path, digits):
    root = write_digit_folder(tmp_path / "d", digits, 2, classes=3)
    path = root / "train" / "zero" / "photo.jpg"
    PIL.Image.open(PHOTOS[0]).convert("RGB").resize((200, 150)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = open_dataset(f"folder:{root}")  # The header still reads: listing passes.
    assert image_size(path) == (200, 150) and len(source.train) + len(source.test) == 7
    with pytest.raises(ValueError, match=f"{path}: cannot decode the image") as info:
        CentreCrop((8, 8), 3)(str(path), np.random.default_rng(0), str(path))
    assert "\n" not in str(info.value)


def test_the_processes_of_a_run_read_disjoint_halves_of_every_batch():
    halves = [
        BatchPlan(seed=0, num_examples=50, batch_size=16, rows=rows)
        for rows in (tuple(range(8)), tuple(range(8, 16)))
    ]
    for step in range(7):  # Two epochs of 3 steps, and into the third.
        read = sorted(
            plan.locate(plan.first_position(step) + row)
            for plan in halves
            for row in range(plan.local_batch)
        )
        epoch, first = divmod(step, 3)
        assert read == [(epoch, first * 16 + row) for row in range(16)]

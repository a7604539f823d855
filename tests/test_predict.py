"""`zoo predict`: what a file means to a model, and one-line errors for every bad file.

Uses the shipped lenet5-mnist5k checkpoint, so a prediction can be checked against the label.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import zoo.cli.hub
from zoo.cli import main
from zoo.cli.hub import INVERTED_NOTE, read_images
from zoo.data import load_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
DIGITS = 60


@pytest.fixture(scope="module")
def digits(mnist5k_dir: Path):
    test = load_dataset("mnist5k", data_dir=mnist5k_dir).test
    return test.images[:DIGITS], test.labels[:DIGITS]


def predict(*files: Path) -> None:
    assert main(["predict", "lenet5-mnist5k", *map(str, files), "--registry", str(SHIPPED)]) == 0


def predicted_classes(out: str) -> list[int]:
    """The most probable class of each line: `FILE: 7 (98.1%)[, 1 (10.2%)...][ (note)]`."""
    return [int(re.search(r": (\d) \(\d+\.\d%\)", line)[1]) for line in out.splitlines()]


def test_black_on_white_digits_are_inverted_with_a_note(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(zoo.cli.hub, "PREDICT_BATCH", 16)  # 60 digits: 3 whole slices and a part
    images, labels = digits
    np.save(tmp_path / "white.npy", 255 - images)  # black strokes on white paper
    np.save(tmp_path / "black.npy", images)
    PIL.Image.fromarray(255 - images[0].squeeze(-1)).save(tmp_path / "white.png")

    predict(tmp_path / "white.npy", tmp_path / "black.npy", tmp_path / "white.png")

    lines = capsys.readouterr().out.splitlines()
    white, black, png = lines[:DIGITS], lines[DIGITS:-1], lines[-1]
    assert all(line.endswith(INVERTED_NOTE) for line in [*white, png])
    assert not any(INVERTED_NOTE in line for line in black)
    assert [line.split(":")[0] for line in white] == [
        f"{tmp_path / 'white.npy'}[{i}]" for i in range(DIGITS)
    ]
    white_classes, black_classes = (predicted_classes("\n".join(part)) for part in (white, black))
    assert white_classes == black_classes
    assert np.mean(np.array(white_classes) == labels) >= 0.95
    assert predicted_classes(png) == [black_classes[0]]


def test_an_rgb_image_in_a_npy_is_one_image_not_a_batch_of_rows(tmp_path):
    np.save(tmp_path / "rgb.npy", np.zeros((40, 48, 3), np.uint8))
    np.save(tmp_path / "one.npy", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.npy: expected one raw image \(32, 32, 3\)"):
        read_images(tmp_path / "rgb.npy", (32, 32, 3))
    assert read_images(tmp_path / "one.npy", (32, 32, 3)).shape == (1, 32, 32, 3)


def test_bad_files_are_one_line_errors_naming_the_file(bad_image_files, capsys):
    for path, message in bad_image_files.items():
        assert main(["predict", "lenet5-mnist5k", str(path), "--registry", str(SHIPPED)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"zoo predict: error: {path}: ") and message in err
        assert err.count("\n") == 1


def test_an_empty_npy_is_a_one_line_error(tmp_path, capsys):
    for name, empty in (("grey", (0, 28, 28)), ("channels", (0, 28, 28, 1)), ("flat", (0,))):
        np.save(tmp_path / f"{name}.npy", np.zeros(empty, np.uint8))
        path = tmp_path / f"{name}.npy"
        assert main(["predict", "lenet5-mnist5k", str(path), "--registry", str(SHIPPED)]) == 2
        out, err = capsys.readouterr()
        assert not out and err.startswith(f"zoo predict: error: {path}: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((0, 28, 28), np.uint8), r"no images to classify: the batch is empty"),
        (np.zeros((2, 28, 28), np.float32), r"expected raw uint8 images \(0..255\), got float32"),
        (np.full((2, 28, 28), -1), r"expected raw uint8 images \(0..255\), got int64"),
        (np.zeros((2, 28, 28), np.float64).tolist(), r"got float64"),
    ],
)
def test_predict_refuses_what_zoo_predict_and_arrays_refuse(digits, images, message):
    model = zoo.load("lenet5-mnist5k", registry=SHIPPED)
    with pytest.raises(zoo.ZooError, match=message) as error:
        model.predict(images)
    assert isinstance(error.value, ValueError)
    assert (model.predict(digits[0][:8]) == digits[1][:8]).mean() > 0.5  # uint8 still works.

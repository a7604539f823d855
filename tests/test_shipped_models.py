"""The pretrained models shipped in checkpoints/ load by name and do what their metadata says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.data import load_dataset

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def digits(mnist5k_dir: Path):
    return load_dataset("mnist5k", data_dir=mnist5k_dir).test


def test_lenet5_mnist5k_predicts_raw_held_out_digits(digits):
    model = zoo.load("lenet5-mnist5k", registry=SHIPPED)
    assert model.model_name == "lenet5" and model.meta["dataset"] == "mnist5k"
    assert model.meta["config"]["model"] == "lenet5"  # trained by `zoo train`, as recorded
    accuracy = float(np.mean(model.predict(digits.images) == digits.labels))
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(model.meta["metrics"]["val_accuracy"], abs=1e-6)


def test_conv_autoencoder_mnist5k_reconstructs_better_than_the_mean_image(digits):
    model = zoo.load("conv_autoencoder-mnist5k", registry=SHIPPED)
    x = np.asarray(model.preprocessing(digits.images))
    error = float(np.mean((np.asarray(model.apply(x)) - x) ** 2))
    mean_image_error = float(np.mean((x - x.mean(axis=0)) ** 2))
    assert error < 0.8 * mean_image_error  # two numbers per digit explain a fifth beyond it
    assert error == pytest.approx(model.meta["metrics"]["val_loss"], rel=1e-4)

"""The pretrained models shipped in checkpoints/ travel in the wheel, load by name from any folder,
do what their metadata says, and are never written to."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import hub
from zoo.data import load_dataset
from zoo.errors import NotWritableError

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


def shipped_files() -> dict[str, int]:
    return {str(p.relative_to(SHIPPED)): p.stat().st_mtime_ns for p in SHIPPED.rglob("*")}


def test_the_wheel_lists_every_package_and_maps_the_shipped_models_into_it():
    # `find` cannot see the mapped checkpoints/, so the packages are listed: none may be missing.
    setuptools = tomllib.loads((SHIPPED.parent / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]
    on_disk = {
        ".".join(init.parent.relative_to(SHIPPED.parent).parts)
        for init in (SHIPPED.parent / "zoo").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"zoo.checkpoints"}
    assert setuptools["package-dir"] == {"zoo.checkpoints": "checkpoints"}
    assert setuptools["package-data"]["zoo.checkpoints"] == ["**/*"]


def test_shipped_models_load_by_name_with_an_empty_user_registry(user_registry):
    before = shipped_files()
    model = zoo.load("lenet5-mnist5k")
    assert hub.shipped_root() == SHIPPED
    assert (model.source, model.path.parent.parent) == ("shipped", SHIPPED)
    assert hub.read_metadata("lenet5-mnist5k")["step"] == model.step
    sources = {(r.name, r.source) for r in hub.list_checkpoints()}
    assert {("lenet5-mnist5k", "shipped"), ("conv_autoencoder-mnist5k", "shipped")} <= sources
    assert shipped_files() == before  # Reading takes no lock file and writes nothing there.
    assert list(user_registry.iterdir()) == []


def test_a_users_run_under_a_shipped_name_shadows_it_and_says_so(user_registry):
    shipped = zoo.load("lenet5-mnist5k")
    record = hub.save(
        "lenet5-mnist5k",
        model_name="lenet5",
        model_config={},
        variables=shipped.variables,
        step=7,
        meta={"preprocessing": shipped.meta["preprocessing"]},
    )
    assert record.path == user_registry / "lenet5-mnist5k" / "step_7"
    mine = zoo.load("lenet5-mnist5k")
    assert (mine.source, mine.step) == ("user", 7)
    again = zoo.load("lenet5-mnist5k", registry=hub.shipped_root())
    assert (again.source, again.step) == ("shipped", shipped.step)
    listed = [(r.source, r.step) for r in hub.list_checkpoints() if r.name == "lenet5-mnist5k"]
    assert listed[0] == ("user", 7) and ("shipped", shipped.step) in listed


def test_nothing_is_ever_saved_into_the_shipped_models():
    before = shipped_files()
    shipped = zoo.load("lenet5-mnist5k", registry=SHIPPED)
    with pytest.raises(NotWritableError, match="shipped models, which are read-only"):
        hub.save(
            "lenet5-mnist5k",
            model_name="lenet5",
            model_config={},
            variables=shipped.variables,
            step=shipped.step + 1,
            registry=SHIPPED,
        )
    with pytest.raises(NotWritableError):
        hub.check_writable(SHIPPED)
    assert shipped_files() == before

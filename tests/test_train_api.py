"""`zoo.training.train`: the presets `zoo train` applies, arrays, callbacks, the returned model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import zoo.training
from zoo import hub
from zoo.data import load_dataset
from zoo.training import EarlyStopping, configure
from zoo.training.config import PRESETS

# The README's "Training from Python" example, run as it is written there.
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The README's "Training from Python" example, as it is written there."""
    text = README.read_text()
    section = text[text.index("### Training from Python") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch, mnist5k_env):
    monkeypatch.chdir(tmp_path)  # The metrics log goes to runs/.


def test_the_readme_example_runs(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "epoch 1: " in out and "epoch 3: " in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("3 ") and "%" in last


def test_train_applies_the_preset_that_zoo_train_applies():
    config = configure("lenet5", epochs=2)
    assert config.epochs == 2
    for key, value in PRESETS["lenet5"].items():
        if key != "epochs":
            assert getattr(config, key) == value, key


def test_arrays_train_a_model_that_is_returned_and_saved_on_request(tmp_path):
    digits = load_dataset("mnist5k")
    data = zoo.training.arrays(
        digits.train.images[:256, ..., 0],  # (N, H, W) grey images are fine.
        digits.train.labels[:256],
        digits.test.images[:200],
        digits.test.labels[:200],
        name="mine",
        class_names=NAMES,
    )
    assert data.num_classes == 10
    epochs_seen = []
    run = zoo.training.train(
        "mlp",
        data=data,
        epochs=2,
        batch_size=32,
        registry=str(tmp_path / "registry"),
        callbacks=[lambda record: epochs_seen.append(record["epoch"])],
        console=Console(quiet=True),
    )
    assert epochs_seen == [1, 2] and run.name == "mlp-mine"
    saved = hub.load("mlp-mine", registry=tmp_path / "registry")
    assert saved.meta["dataset"] == "mine" and run.model.step == saved.step == 16
    predicted = run.model.predict(digits.test.images[:200])
    accuracy = np.mean(predicted == digits.test.labels[:200])
    assert (
        accuracy == pytest.approx(run.metrics["val_accuracy"], abs=1e-6) and accuracy > 0.2
    )  # Chance: 10%.
    # The names travel with the model, saved or not, and name its predictions.
    assert saved.class_names == run.model.class_names == NAMES
    assert saved.meta["class_names"] == list(NAMES)
    ranked = saved.classify(digits.test.images[:3], top=2)
    for image, predictions in zip(digits.test.images[:3], ranked, strict=True):
        first, second = predictions
        assert first.class_id == saved.predict(image[None])[0]
        assert first.name == NAMES[first.class_id] and second.name == NAMES[second.class_id]
        assert first.probability >= second.probability


NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_arrays_take_class_names_one_per_class():
    images, labels = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 1])
    named = zoo.training.arrays(images, labels, images, labels, class_names=["a", "b", "c", "d"])
    assert (named.num_classes, named.class_names) == (4, ("a", "b", "c", "d"))
    assert zoo.training.arrays(images, labels, images, labels).class_names is None
    with pytest.raises(ValueError, match="2 class names for 3 classes; give one per class"):
        zoo.training.arrays(images, labels, images, labels, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        zoo.training.arrays(images, labels, images, labels, class_names=["a", "b"])
    with pytest.raises(TypeError, match="class_names must be a sequence of strings, got 'abc'"):
        zoo.training.arrays(images, labels, images, labels, class_names="abc")
    with pytest.raises(TypeError, match="class_names must be a sequence of strings"):
        zoo.training.arrays(images, labels, images, labels, class_names=[0, 1, 2])


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stop = EarlyStopping("val_loss", patience=2)
    assert [stop({"val_loss": v}) for v in (1.0, 0.5, 0.6, 0.5, 0.4)] == [
        False,
        False,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="patience must be at least 1"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="no 'val_acc'"):
        EarlyStopping("val_acc")({"val_loss": 1.0})


def test_a_stopping_callback_ends_the_run_and_its_last_epoch_is_saved(tmp_path):
    run = zoo.training.train(
        "mlp",
        dataset="synthetic",
        epochs=5,
        batch_size=32,
        max_train_examples=64,
        checkpoint_every=10,
        registry=str(tmp_path / "registry"),  # Not the current folder: runs/ goes there.
        callbacks=[lambda record: record["epoch"] == 2],
        console=Console(quiet=True),
    )
    saved = hub.load("mlp-synthetic", registry=tmp_path / "registry")
    assert run.epoch == 2 and saved.meta["epoch"] == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"data": 5}, "data must be a zoo.data.Dataset .*, or a data set.s name or path"),
        ({"data": np.zeros((4, 28, 28), np.uint8)}, "data must be a zoo.data.Dataset"),
        ({"callbacks": 5}, "callbacks must be a list of functions"),
        ({"callbacks": print}, "callbacks must be a list of functions"),
        ({"callbacks": [5]}, "each callback must be a function"),
        ({"console": "quiet"}, "console must be a rich.console.Console"),
        ({"save": "no"}, "save must be True or False"),
    ],
)
def test_arguments_of_the_wrong_kind_are_zoo_errors(arguments, message):
    with pytest.raises(zoo.ZooError, match=message) as error:
        zoo.training.train("mlp", epochs=1, **arguments)
    assert isinstance(error.value, TypeError)


def test_a_config_of_the_wrong_kind_is_a_zoo_error():
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        zoo.training.fit("mlp")


GREY = np.zeros((8, 28, 28), np.uint8)
LABELS = np.arange(8) % 2


@pytest.mark.parametrize(
    ("arrays", "error", "message"),
    [
        ((GREY, LABELS, GREY[:0], LABELS[:0]), ValueError, "the held-out split is empty"),
        ((GREY[:0], LABELS[:0], GREY, LABELS), ValueError, "the training split is empty"),
        ((GREY / 255, LABELS, GREY, LABELS), TypeError, "images must be raw uint8"),
        ((GREY, LABELS, GREY.astype(np.int64) - 1, LABELS), TypeError, "must be raw uint8"),
        ((GREY, LABELS + 0.5, GREY, LABELS), TypeError, "labels must be a 1-D array of integer"),
        ((GREY, LABELS.astype(float), GREY, LABELS), TypeError, "integer class ids, got float64"),
        ((GREY, LABELS, GREY, -LABELS), ValueError, r"labels must be in \[0, 1\], got .* -1"),
        # 2**40 would wrap around to 0 in int32.
        ((GREY, LABELS, GREY, LABELS + 2**40), ValueError, r"labels must be in \[0, 1\]"),
    ],
)
def test_arrays_refuse_what_they_would_otherwise_convert_or_fail_on_later(arrays, error, message):
    with pytest.raises(error, match=message) as raised:
        zoo.training.arrays(*arrays, num_classes=2)
    assert isinstance(raised.value, zoo.ZooError)


@pytest.mark.parametrize(
    ("train_labels", "num_classes", "message"),
    [
        (np.zeros(8, np.int64), None, "has 1 class: a classifier needs at least 2"),
        (np.zeros(8, np.int64), 10, "training labels are all 0: a classifier needs examples"),
    ],
)
def test_one_class_data_is_refused_for_a_classifier(train_labels, num_classes, message):
    data = zoo.training.arrays(GREY, train_labels, GREY, LABELS * 0, num_classes=num_classes)
    with pytest.raises(ValueError, match=message):
        zoo.training.train("mlp", data=data, epochs=1, batch_size=4, save=False)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: EarlyStopping(patience="3"), TypeError, "patience must be an integer"),
        (lambda: EarlyStopping(metric=3), TypeError, "metric must be a metric's name"),
        (lambda: EarlyStopping(min_delta="0"), TypeError, "min_delta must be a number"),
        (lambda: EarlyStopping(min_delta=-1), ValueError, "min_delta must be a finite number"),
        (lambda: zoo.training.train("mlp", config_file=5), TypeError, "a config file is a path"),
        (lambda: zoo.training.train(5), TypeError, "model must be str"),
        (lambda: zoo.create_model(5), TypeError, "a model name is a string"),
        (lambda: zoo.list_models(5), TypeError, "a model name pattern is a string"),
        (lambda: configure("mlp", seed=2**32), ValueError, r"seed must be in \[0, 2\*\*32 - 1\]"),
        (lambda: configure("mlp", seed=-1), ValueError, "seed must be in"),
    ],
)
def test_other_api_mistakes_are_zoo_errors(make, error, message):
    with pytest.raises(error, match=message) as raised:
        make()
    assert isinstance(raised.value, zoo.ZooError)

"""`zoo train` and `zoo eval` through `zoo.cli.main`: a real run, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo import cli, hub
from zoo.data import load_dataset
from zoo.hub.store import flat_specs
from zoo.preprocessing import Preprocessing
from zoo.training import experiment, loop
from zoo.training.state import frozen_paths


@pytest.fixture(autouse=True)
def data_dir(mnist5k_env: Path) -> Path:
    return mnist5k_env


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_eval_lenet5_on_the_embedded_digits(tmp_path, capsys):
    registry, log = tmp_path / "registry", tmp_path / "metrics.jsonl"
    code, out, err = run(
        capsys,
        "train",
        "lenet5",
        "--epochs",
        "1",
        "--max-train-examples",
        "640",
        "--registry",
        str(registry),
        "--log",
        str(log),
    )
    assert code == 0, err
    assert re.search(r"epoch 1/1 .* val_acc \d+\.\d\d%", out)
    assert f"saved lenet5-mnist5k step 10 to {registry}: val_accuracy" in out
    record = json.loads(log.read_text().splitlines()[-1])

    code, out, err = run(capsys, "eval", "lenet5-mnist5k", "--registry", str(registry))
    assert code == 0, err
    first, header, *rows = out.strip().splitlines()
    assert first == (
        f"lenet5-mnist5k step 10 on mnist5k held-out split (1,000 images): "
        f"accuracy {record['val_accuracy']:.2%}, loss {record['val_loss']:.4f}"
    )

    loaded = hub.load("lenet5-mnist5k", registry=registry)
    assert loaded.meta["class_names"] == [str(digit) for digit in range(10)]
    test = load_dataset("mnist5k").test
    predicted = loaded.predict(test.images)
    accuracy = np.mean(predicted == test.labels)
    assert accuracy == pytest.approx(record["val_accuracy"])
    assert accuracy > 0.5  # One short epoch on real digits already learns something.
    # Each digit's accuracy, a line each, by name: 100 held-out images of every digit.
    assert header.split() == ["class", "accuracy", "images"]
    for digit, row in enumerate(rows):
        correct = np.mean(predicted[test.labels == digit] == digit)
        assert row.split() == [str(digit), f"{correct:.2%}", "100"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "lenet"], "unknown model 'lenet'; did you mean: lenet5"),
        (
            ["train", "mlp", "--dataset", "mnist6k"],
            "unknown dataset 'mnist6k'; did you mean mnist5k",
        ),
        (["train", "mlp", "--epochs", "-1"], "epochs must be at least 1, got -1"),
        (["train", "mlp", "--lr", "-0.1"], "lr must be positive, got -0.1"),
        (["train", "mlp", "--resume"], "no checkpoint named 'mlp-mnist5k'"),
        (["train", "--epochs", "2"], "no model given"),
        (["train", "mlp", "--config", "missing.toml"], "config file missing.toml does not exist"),
        (
            [
                "train",
                "mlp",
                "--precision",
                "bf16",
                "--dataset",
                "synthetic",
                "--max-train-examples",
                "100",
                "--batch-size",
                "101",
            ],
            "batch size 101 is larger than the 100 training examples",
        ),
        (["eval", "nothing-here"], "no checkpoint named 'nothing-here'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, *argv, "--registry", str(tmp_path))
    assert code == 2
    assert err.startswith(f"zoo {argv[0]}: error: ") and message in err
    assert err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # Nothing was saved.


def test_a_registry_path_that_is_a_file_is_refused(tmp_path, capsys):
    registry = tmp_path / "registry"
    registry.write_text("not a folder")
    code, _, err = run(capsys, "train", "mlp", "--registry", str(registry))
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: permission bits, or for root a read-only /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("running as root with a writable /sys: no read-only folder to test")
    except OSError:
        return Path("/sys")


@pytest.mark.parametrize("where", ["registry", "log"])
def test_an_unwritable_registry_or_log_folder_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, read_only_folder, where
):
    def no_work(config):
        pytest.fail("data was loaded before the folders were checked")

    monkeypatch.setattr(loop, "build_experiment", no_work)
    paths = {"registry": tmp_path / "registry", "log": tmp_path / "log.jsonl"}
    paths[where] = read_only_folder / ("zoo-registry" if where == "registry" else "m.jsonl")
    code, _, err = run(
        capsys, "train", "mlp", "--registry", str(paths["registry"]), "--log", str(paths["log"])
    )
    assert code == 2 and err.count("\n") == 1, err
    folder = paths["registry"] if where == "registry" else read_only_folder
    assert re.match(rf"zoo train: error: .* {re.escape(str(folder))} is not writable", err)


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_an_empty_name_is_refused(tmp_path, capsys, resume):
    code, _, err = run(capsys, "train", "mlp", "--name", "", "--registry", str(tmp_path), *resume)
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"name (must|is empty)", err), err
    assert not any(tmp_path.iterdir())


def test_unknown_config_key_names_the_file(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": "mlp", "batchsize": 32}))
    code, _, err = run(capsys, "train", "--config", str(path))
    assert code == 2 and f"{path}: unknown key 'batchsize'; did you mean 'batch_size'?" in err


@pytest.mark.parametrize(
    "argv", [["train", "mlp", "--optimizer", "adam"], ["train", "mlp", "--epochs", "two"]]
)
def test_argparse_rejects_malformed_flags_with_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "zoo train: error: argument" in capsys.readouterr().err


def test_divergence_and_interruption_are_reported_without_a_traceback(
    tmp_path, capsys, monkeypatch
):
    def diverge(config, **options):
        raise loop.TrainingDiverged("training diverged at epoch 1")

    monkeypatch.setattr(loop, "fit", diverge)
    code, _, err = run(capsys, "train", "mlp", "--registry", str(tmp_path))
    assert (code, err) == (1, "zoo train: error: training diverged at epoch 1\n")

    def interrupt(config, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "fit", interrupt)
    code, _, err = run(capsys, "train", "mlp", "--name", "run7", "--registry", str(tmp_path))
    assert code == 130
    # Nothing to resume, so no `--resume` advice (which would fail).
    assert err == (
        "zoo train: interrupted (SIGINT) before its first checkpoint; nothing of run7 was saved\n"
    )


def test_eval_of_an_entry_without_a_data_set_says_to_name_one(tmp_path, capsys):
    # What `zoo import-torchvision` saves: weights and preprocessing, no training data set.
    raw = np.stack([np.zeros((28, 28, 1), np.uint8), np.full((28, 28, 1), 255, np.uint8)])
    preprocessing = Preprocessing.fit(raw, (28, 28, 1))
    model = zoo.create_model("mlp")
    variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    hub.save(
        "imported",
        model_name="mlp",
        model_config={},
        variables=variables,
        step=0,
        registry=tmp_path,
        meta={"preprocessing": preprocessing.to_dict()},
    )
    code, _, err = run(capsys, "eval", "imported", "--registry", str(tmp_path))
    assert code == 2 and err.count("\n") == 1, err
    assert "imported step 0 records no data set" in err
    assert "`zoo eval imported --dataset NAME` with a data set of 28x28x1 images" in err
    code, out, err = run(
        capsys, "eval", "imported", "--registry", str(tmp_path), "--dataset", "mnist5k"
    )
    assert code == 0 and "imported step 0 on mnist5k held-out split (1,000 images)" in out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lenet5", "--model-arg", "num_classes=ten"], "num_classes='ten' is not an integer"),
        (["lenet5", "--model-arg", "num_classes={bad"], "num_classes='{bad' is not an integer"),
        (["mlp", "--model-arg", "hidden=7"], "mlp: hidden=7 is not a sequence of integers"),
        (["lenet5", "--model-arg", "dtype=banana"], "dtype='banana' is not a floating-point"),
        (["lenet5", "--model-arg", "param_dtype=int8"], "param_dtype='int8' is not a floating"),
        (["lenet5", "--mixup", "inf"], "mixup must be a finite number, got inf"),
        (["lenet5", "--cutmix", "nan"], "cutmix must be a finite number, got nan"),
        (
            ["conv_autoencoder", "--label-smoothing", "0.1"],
            "label_smoothing works on class labels; conv_autoencoder is a reconstruction model",
        ),
        (["conv_autoencoder", "--mixup", "0.2"], "mixup works on class labels"),
        (
            ["lenet5", "--train-only", "nomatch/*"],
            "train_only 'nomatch/*' matches no parameter; the parameters are c1/*, c3/*, c5/*, "
            "f6/*, output/* (`head` is the classifier, output/*)",
        ),
        (["lenet5", "--train-only", "["], "train_only '[' matches no parameter"),
        (["lenet5", "--train-only", "head/*"], "train_only 'head/*' matches no parameter"),
        (["resnet20", "--train-only", "head,nothing*"], "train_only 'nothing*' matches no"),
    ],
)
def test_settings_are_refused_in_one_line_before_any_data_is_loaded(
    tmp_path, capsys, monkeypatch, argv, message
):
    def no_data(*args, **kwargs):
        pytest.fail("data was loaded before the settings were checked")

    monkeypatch.setattr(experiment, "open_dataset", no_data)
    code, _, err = run(capsys, "train", *argv, "--registry", str(tmp_path))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("zoo train: error: ") and message in err, err
    assert not any(tmp_path.iterdir())


def test_train_only_head_names_the_classifier_of_any_model(tmp_path):
    for model, head in (("lenet5", "output"), ("resnet20", "fc"), ("mlp", "classifier")):
        module = zoo.create_model(model)
        shape = (1, *module.input_size, module.in_channels)
        variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
        frozen = frozen_paths(variables, "head", module.head_name)
        trained = {path for path in flat_specs(variables) if path not in frozen}
        assert trained and all(path.split("/")[1] == head for path in trained), trained


def test_the_metrics_log_and_its_tensorboard_folder_never_land_in_a_registry(
    tmp_path, capsys, user_registry
):
    registry = tmp_path / "registry"
    registry.mkdir()
    for log, what in (
        (registry / "m.jsonl", "metrics log"),
        (user_registry / "m.jsonl", "metrics log"),
        (tmp_path / "registry.jsonl", "TensorBoard folder"),  # Its events: registry/ itself.
    ):
        code, _, err = run(capsys, "train", "mlp", "--registry", str(registry), "--log", str(log))
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"zoo train: error: {what} ") and "it is inside" in err, err
    assert not any(registry.iterdir())
    code, _, err = run(
        capsys,
        "train",
        "mlp",
        "--registry",
        str(registry),
        "--log",
        str(tmp_path / "registry.jsonl"),
        "--no-tensorboard",
        "--train-only",
        "nomatch",  # The first check after the log's.
    )
    assert "train_only 'nomatch' matches no parameter" in err  # Without events, that log is fine.

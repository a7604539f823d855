"""The loop end to end on tiny runs: determinism, exact resume, the NaN guard, what is saved."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console
from tensorboard.backend.event_processing import event_accumulator

from zoo import hub
from zoo.data import make_synthetic
from zoo.preprocessing import Preprocessing
from zoo.training import loop
from zoo.training.config import TrainConfig
from zoo.training.experiment import build_experiment, initial_state, restore_state
from zoo.training.loop import TrainingDiverged, fit
from zoo.training.report import tensorboard_dir

STEPS_PER_EPOCH = 8  # 256 examples / batch 32


def tiny_config(folder: Path, **overrides) -> TrainConfig:
    settings = {
        "model": "mlp",
        "dataset": "synthetic",
        "epochs": 2,
        "batch_size": 32,
        "max_train_examples": 256,
        "augment": True,
        "lr": 0.05,
        "warmup_epochs": 0.5,
        "registry": str(folder / "registry"),
        "log": str(folder / "log.jsonl"),
    }
    return TrainConfig(**{**settings, **overrides})


def quiet() -> Console:
    return Console(quiet=True)


def variables_at(config: TrainConfig, step: int | None = None):
    return jax.device_get(hub.load(config.run_name, step=step, registry=config.registry).variables)


def assert_same(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


def interrupt_in_epoch_2(config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs `config` until Ctrl-C arrives at the start of epoch 2 (after epoch 1 was saved)."""
    train_epoch = loop._train_epoch

    def interrupted(experiment, train_fn, state, epoch, *args, **options):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(experiment, train_fn, state, epoch, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fit(config, console=quiet())


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> TrainConfig:
    """An uninterrupted two-epoch run."""
    config = tiny_config(tmp_path_factory.mktemp("straight"))
    fit(config, console=quiet())
    return config


def test_an_interrupted_run_resumes_exactly(straight, tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    interrupt_in_epoch_2(config, monkeypatch)
    assert hub.latest_step(config.run_name, registry=config.registry) == STEPS_PER_EPOCH
    # Same seed, separate run: the same parameters after epoch 1.
    assert_same(variables_at(config), variables_at(straight, step=STEPS_PER_EPOCH))

    result = fit(config, resume=True, console=quiet())
    assert result.step == 2 * STEPS_PER_EPOCH
    assert_same(variables_at(config), variables_at(straight))
    events = [json.loads(line) for line in Path(config.log).read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "stopped", "start", "epoch"]
    assert events[2]["reason"] == "KeyboardInterrupt"
    assert events[3]["resumed_at_epoch"] == 1 and events[4]["epoch"] == 2
    assert events[3]["schedule_change"] is None and "schedule_change" not in events[4]


@pytest.mark.slow
def test_a_checkpoint_restores_every_leaf_of_a_batchnorm_state(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, model="resnet20", epochs=1, batch_size=16, max_train_examples=32)
    saved = []
    save_checkpoint = loop.save_checkpoint

    def recording(experiment, state, **options):
        saved.append(jax.device_get((state.variables, state.resumable())))
        return save_checkpoint(experiment, state, **options)

    monkeypatch.setattr(loop, "save_checkpoint", recording)
    fit(config, console=quiet())
    experiment = build_experiment(dataclasses.replace(config, epochs=2))
    restored, step, meta = restore_state(experiment, initial_state(experiment))
    assert meta["epoch"] == 1 and set(restored.variables) == {"params", "batch_stats"}
    assert step == int(restored.step) == 2
    assert_same(jax.device_get((restored.variables, restored.resumable())), saved[-1])


def test_another_seed_gives_other_parameters(straight, tmp_path):
    config = tiny_config(tmp_path, seed=1, epochs=1)
    fit(config, console=quiet())
    first = variables_at(straight, step=STEPS_PER_EPOCH)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(variables_at(config)), strict=True)
    )


def test_the_saved_model_predicts_raw_images(straight):
    loaded = hub.load(straight.run_name, registry=straight.registry)
    data = make_synthetic((28, 28, 1), 10)
    assert loaded.preprocessing == Preprocessing.fit(data.train.images[:256], (28, 28, 1))
    meta = loaded.meta
    assert meta["dataset"] == "synthetic" and meta["epoch"] == 2
    assert meta["config"] == straight.to_dict()
    accuracy = float(np.mean(loaded.predict(data.test.images) == data.test.labels))
    assert accuracy == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)
    assert set(meta["metrics"]) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    record = json.loads(Path(straight.log).read_text().splitlines()[-1])
    assert record["event"] == "epoch" and record["checkpoint_step"] == 2 * STEPS_PER_EPOCH
    assert record["images_per_second"] > 0 and 0 < record["val_accuracy"] <= 1


def test_a_nan_loss_stops_training_with_a_clear_error(tmp_path):
    config = tiny_config(tmp_path, lr=1e30, warmup_epochs=0)
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1.*lr 1e\+30.*no checkpoint"):
        fit(config, console=quiet())
    assert hub.latest_step(config.run_name, registry=config.registry) is None
    events = [json.loads(line) for line in Path(config.log).read_text().splitlines()]
    assert (events[-1]["event"], events[-1]["reason"]) == ("stopped", "TrainingDiverged")


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    train_step = loop.train_step

    def poisoned_after_epoch_1(state, batch, **options):
        state, metrics = train_step(state, batch, **options)
        bad = state.step > STEPS_PER_EPOCH
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
        loss = jnp.where(bad, jnp.nan, metrics["loss_sum"])
        return state.replace(params=params), {**metrics, "loss_sum": loss}

    monkeypatch.setattr(loop, "train_step", poisoned_after_epoch_1)
    with pytest.raises(TrainingDiverged, match=f"epoch 2.*step {STEPS_PER_EPOCH} of"):
        fit(config, console=quiet())
    assert hub.latest_step(config.run_name, registry=config.registry) == STEPS_PER_EPOCH
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables_at(config)))


def poison(monkeypatch: pytest.MonkeyPatch, change, after_step: int = STEPS_PER_EPOCH) -> None:
    """After the run's step `after_step`, every step's parameters become `change(params)`."""
    train_step = loop.train_step

    def poisoned(state, batch, **options):
        state, metrics = train_step(state, batch, **options)
        bad = state.step > after_step
        params = jax.tree.map(lambda p: jnp.where(bad, change(p), p), state.params)
        return state.replace(params=params), metrics

    monkeypatch.setattr(loop, "train_step", poisoned)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # Huge but finite weights: a held-out loss of ~1e10, as a far too high lr gives.
        (lambda p: p * 1e3, r"val_loss = .*, over 10x"),
        # All-zero weights: loss ln(10), accuracy of always guessing class 0.
        (jnp.zeros_like, r"val_accuracy = .*down to about chance"),
    ],
    ids=["loss", "accuracy"],
)
def test_a_finite_divergence_is_stopped_and_never_saved(tmp_path, monkeypatch, change, reason):
    # Settings under which epoch 1 is well above chance (>= 30%), so a collapse can be seen.
    config = tiny_config(tmp_path, epochs=3, lr=0.2, augment=False)
    poison(monkeypatch, change)
    message = (
        rf"epoch 2, step {2 * STEPS_PER_EPOCH} .*registry.*{reason}.*step {STEPS_PER_EPOCH} of"
    )
    with pytest.raises(TrainingDiverged, match=message):
        fit(config, console=quiet())
    assert hub.latest_step(config.run_name, registry=config.registry) == STEPS_PER_EPOCH
    meta = hub.load(config.run_name, registry=config.registry).meta
    assert meta["epoch"] == 1 and meta["metrics"]["val_accuracy"] >= 0.3


def test_a_diverged_run_under_a_saved_name_names_the_registry_step(tmp_path, monkeypatch):
    """A second run's first epoch diverges: no best of its own, so ln(classes) is the bar."""
    config = tiny_config(tmp_path, epochs=1)
    fit(config, console=quiet())
    poison(monkeypatch, lambda p: p * 1e3, after_step=0)
    message = rf"epoch 1, step {2 * STEPS_PER_EPOCH} .*ln\(classes\).*step {STEPS_PER_EPOCH} of"
    with pytest.raises(TrainingDiverged, match=message):
        fit(config, console=quiet())
    assert hub.latest_step(config.run_name, registry=config.registry) == STEPS_PER_EPOCH


def test_a_new_run_under_a_saved_name_adds_checkpoints_after_it(tmp_path):
    config = tiny_config(tmp_path, epochs=1, max_to_keep=1)
    first = fit(config, console=quiet()).step
    second = fit(config, console=quiet()).step  # Retention leaves the first run's step alone.
    assert (first, second) == (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    # Same config and seed: the second run ends where the first did, which is still there.
    assert_same(variables_at(config, step=second), variables_at(config, step=first))
    history = hub.load(config.run_name, registry=config.registry).meta["history"]
    assert [(record["epoch"], record["checkpoint_step"]) for record in history] == [(1, second)]


def test_resuming_with_more_epochs_says_the_schedule_is_rebuilt_and_records_it(
    straight, tmp_path, monkeypatch
):
    config = tiny_config(tmp_path)
    interrupt_in_epoch_2(config, monkeypatch)
    longer = dataclasses.replace(config, epochs=4)
    console = Console(record=True, width=400)
    fit(longer, resume=True, console=console)
    # Cosine after a 4-step warm-up: at step 8, 1/3 of the way through 12 steps, or 1/7 of 28.
    before, after = (0.05 * (1 + math.cos(math.pi * fraction)) / 2 for fraction in (1 / 3, 1 / 7))
    assert re.search(
        rf"--epochs 4 is not the saved run's 2: .*rebuilt for 4 epochs, so after registry step "
        rf"{STEPS_PER_EPOCH} the lr is {after:.3g} \(the 2-epoch schedule's is {before:.3g}\)",
        console.export_text(),
    )
    history = hub.load(config.run_name, registry=config.registry).meta["history"]
    changes = [record.get("schedule_change") for record in history]
    assert changes[0] is None and changes[2:] == [None, None]
    assert changes[1]["epochs"] == [2, 4] and changes[1]["registry_step"] == STEPS_PER_EPOCH
    assert changes[1]["lr"] == pytest.approx([before, after], rel=1e-5)
    events = [json.loads(line) for line in Path(config.log).read_text().splitlines()]
    assert events[3]["event"] == "start" and events[3]["schedule_change"] == changes[1]


def test_resume_needs_a_checkpoint_and_a_run_it_continues(straight, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(tiny_config(tmp_path), resume=True, console=quiet())
    with pytest.raises(ValueError, match="has trained 2 of 2 epochs already"):
        fit(straight, resume=True, console=quiet())
    changed = TrainConfig(**{**straight.to_dict(), "lr": 0.5, "epochs": 3})
    with pytest.raises(ValueError, match=r"cannot change lr=0\.05 -> 0\.5"):
        fit(changed, resume=True, console=quiet())


def test_an_autoencoder_trains_on_its_reconstruction_error(tmp_path, mnist5k_dir):
    config = tiny_config(
        tmp_path,
        model="conv_autoencoder",
        dataset="mnist5k",
        epochs=2,
        data_dir=str(mnist5k_dir),
        max_train_examples=256,
        augment=False,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.0,
    )
    result = fit(config, console=quiet())
    assert set(result.metrics) == {"train_loss", "val_loss"}
    history = hub.load(config.run_name, registry=config.registry).meta["history"]
    assert history[1]["val_loss"] < history[0]["val_loss"]
    events = [json.loads(line) for line in Path(config.log).read_text().splitlines()]
    assert "val_accuracy" not in events[-1] and events[-1]["event"] == "epoch"


def test_model_args_build_the_model_and_are_saved_so_load_rebuilds_it(tmp_path):
    config = tiny_config(tmp_path, epochs=1, model_args={"hidden": [16]})
    fit(config, console=quiet())
    loaded = hub.load(config.run_name, registry=config.registry)
    assert loaded.module.hidden == (16,) and loaded.meta["config"]["model_args"] == {"hidden": [16]}
    kernels = sorted(v["kernel"].shape for v in loaded.variables["params"].values())
    assert kernels == [(16, 10), (28 * 28, 16)]
    with pytest.raises(TypeError, match=r"mlp: unknown argument.*'hiden'.*valid arguments"):
        build_experiment(tiny_config(tmp_path, model_args={"hiden": [16]}))


@pytest.mark.parametrize(
    ("model", "shape", "line"),
    [
        # Any input size: trains on the data set's own 28x28 digits, grey repeated for RGB.
        ("resnet18", (28, 28, 3), "mnist5k's 28x28x1 images are given 3 channels"),
        ("lenet5", (32, 32, 1), "mnist5k's 28x28x1 images are zero-padded to fit lenet5's 32x32x1"),
        ("mlp", (28, 28, 1), None),
    ],
)
def test_the_input_size_is_the_data_sets_unless_the_model_fixes_it(mnist5k_dir, model, shape, line):
    config = TrainConfig(model=model, data_dir=str(mnist5k_dir), batch_size=8)
    experiment = build_experiment(config)
    assert experiment.input_shape == experiment.preprocessing.input_shape == shape
    assert tuple(experiment.model_config["input_size"]) == shape[:2]
    described = loop._describe_input(experiment)
    assert described == line if line is None else described.startswith(line)


def test_the_smoothed_training_loss_is_labelled_apart_from_the_plain_held_out_loss(tmp_path):
    config = tiny_config(tmp_path, epochs=1, label_smoothing=0.1)
    console = Console(record=True, width=300)
    fit(config, console=console)
    assert re.search(
        r"epoch 1/1  train_loss \(labels smoothed 0\.1\) [\d.]+  train_acc [\d.]+%  val_loss",
        console.export_text(),
    )
    record = hub.load(config.run_name, registry=config.registry).meta["history"][0]
    assert record["train_loss_label_smoothing"] == 0.1
    logged = json.loads(Path(config.log).read_text().splitlines()[-1])
    assert logged["train_loss_label_smoothing"] == 0.1


def test_tensorboard_reads_the_runs_scalars_at_registry_steps_and_plain_output_shows_progress(
    tmp_path,
):
    config = tiny_config(tmp_path)
    output = io.StringIO()
    fit(config, console=Console(file=output, force_terminal=False, width=200))
    events = event_accumulator.EventAccumulator(str(tensorboard_dir(Path(config.log))))
    events.Reload()
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr"} <= set(
        events.Tags()["scalars"]
    )
    history = hub.load(config.run_name, registry=config.registry).meta["history"]
    for tag, key in [("val/accuracy", "val_accuracy"), ("lr", "lr")]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in history], rel=1e-6)
    # Not a terminal: a line while compiling and about every tenth of an epoch, with the ETA.
    lines = output.getvalue().splitlines()
    assert "compiling the training and evaluation steps" in lines
    progress = [line for line in lines if re.match(r"epoch \d/2 +\d+% \(\d/8 steps\)", line)]
    assert len(progress) == 2 * STEPS_PER_EPOCH  # 8 steps an epoch: every step is a tenth.
    assert re.search(r"run 100%, ETA 0:00$", progress[-1]) and "run 50%" in progress[7]


def test_tensorboard_can_be_turned_off(tmp_path):
    config = tiny_config(tmp_path, epochs=1, tensorboard=False)
    fit(config, console=quiet())
    assert not tensorboard_dir(Path(config.log)).exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch installed")
def test_writing_tensorboard_events_does_not_import_torch(tmp_path):
    # tensorboardX imports PyTorch wherever it is installed (3.4 s of every `zoo train` here).
    code = (
        "import sys; from pathlib import Path; from rich.console import Console; "
        "from zoo.training.report import Reporter; "
        "log = Path(sys.argv[1]) / 'run.jsonl'; "
        "reporter = Reporter(Console(quiet=True), log, epochs=1, start_epoch=0, "
        "steps_per_epoch=1, append=False, tensorboard=True); "
        "reporter.__enter__(); reporter.__exit__(None, None, None); "
        "print('torch' in sys.modules, any(Path(sys.argv[1], 'run').iterdir()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"], done.stderr

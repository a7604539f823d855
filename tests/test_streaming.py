"""Training from storage: both data paths, exact resume after a kill inside an epoch, failures.

Runs train `mlp` (28x28x1 input) for 2 epochs of 5 steps on a folder of 50 digit images written
in every format at many sizes (`test_image_data`), with `--checkpoint-every-steps 3`: saves at
steps 3, 5 (epoch end), 6, 9 and 10.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import psutil
import pytest
from rich.console import Console
from test_image_data import PHOTOS, write_digit_folder

from zoo import cli, hub
from zoo.cli.hub import read_images
from zoo.data import load_dataset
from zoo.data.sampling import RandomResizedCrop
from zoo.data.transforms import centre_crop
from zoo.training.config import TrainConfig, resolve
from zoo.training.experiment import build_experiment
from zoo.training.loop import fit
from zoo.training.streaming import DataWorkerDied

RUN = {
    "model": "mlp",
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.05,
    "augment": True,
    "checkpoint_every_steps": 3,
    "tensorboard": False,
}
KILL_AFTER = 6  # Epoch 2, after its first step.
TIMEOUT_S = 180

# `zoo train` that kills itself (SIGKILL) once the checkpoint of step KILL (argv[1]) is saved,
# after writing the process ids of its children (Grain's workers) to argv[2].
KILLED = r"""
import os, signal, sys
import psutil
from zoo import cli
from zoo.training import loop

kill_after, children = int(sys.argv[1]), sys.argv[2]
save_checkpoint = loop.save_checkpoint

def save_then_die(experiment, state, **options):
    save_checkpoint(experiment, state, **options)
    if options["step"] == kill_after:
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        with open(children, "w") as file:
            file.write(" ".join(map(str, pids)))
        os.kill(os.getpid(), signal.SIGKILL)

loop.save_checkpoint = save_then_die
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, mnist5k_dir: Path) -> Path:
    digits = load_dataset("mnist5k", data_dir=mnist5k_dir).train
    return write_digit_folder(tmp_path_factory.mktemp("digits"), digits, 4, held_out=1)


def config(tmp_path: Path, folder: Path, name: str, **settings) -> TrainConfig:
    return resolve(
        {
            **RUN,
            "dataset": f"folder:{folder}",
            "name": name,
            "registry": str(tmp_path / "registry"),
            "log": str(tmp_path / f"{name}.jsonl"),
            **settings,
        }
    )


def train_flags(run: TrainConfig) -> list[str]:
    """`zoo train` flags for `run`: the model, its data and name, and RUN's settings."""
    flags = [run.model, "--dataset", run.dataset, "--name", run.name]
    for key, value in run.to_dict().items():
        if key not in {*RUN, "registry", "log", "data_pipeline", "data_workers"} - {"model"}:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags += [flag, str(value)]
    return flags


def untimed(history: list[dict]) -> list[dict]:
    """Epoch records without their timings (seconds, images/s, the time waiting for data)."""
    timing = ("second", "data_wait")
    return [{k: v for k, v in r.items() if not any(t in k for t in timing)} for r in history]


def assert_same_leaves(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    ("pipeline", "workers"), [("device", 0), ("streaming", 1)], ids=["device", "streaming"]
)
def test_a_run_killed_inside_an_epoch_resumes_bit_for_bit(tmp_path, folder, pipeline, workers):
    straight = config(tmp_path, folder, "straight", data_pipeline=pipeline, data_workers=0)
    fit(straight, console=Console(quiet=True))

    killed = config(tmp_path, folder, "killed", data_pipeline=pipeline, data_workers=workers)
    children = tmp_path / "children"
    command = [sys.executable, "-c", KILLED, str(KILL_AFTER), str(children), "train"]
    run = subprocess.run(
        [*command, *train_flags(killed)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    registry = killed.registry
    saved = hub.read_metadata("killed", registry=registry)
    assert (saved["step"], saved["epoch"]) == (KILL_AFTER, 1)
    assert saved["iterator"]["step"] == 1 and saved["iterator"]["pipeline"] == pipeline
    assert "val_accuracy" not in saved["metrics"]  # Nothing was evaluated inside the epoch.
    pids = [int(pid) for pid in children.read_text().split()]
    assert len(pids) >= workers
    deadline = time.monotonic() + 10  # Grain's workers follow the killed process.
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids):
        assert time.monotonic() < deadline, "a worker process outlived the training process"
        time.sleep(0.2)

    # Resumed with threads instead of a worker process: the data do not depend on it.
    resumed = fit(
        TrainConfig.from_dict({**killed.to_dict(), "data_workers": 0}),
        resume=True,
        console=Console(quiet=True),
    )
    assert resumed.step == 10
    one, two = (hub.load(n, registry=registry) for n in ("straight", "killed"))
    assert_same_leaves(one.variables, two.variables)
    assert untimed(one.meta["history"]) == untimed(two.meta["history"])  # Metrics too.


def test_images_of_one_shape_train_the_same_on_both_paths(tmp_path, mnist5k_dir):
    """The streaming path reads from storage what the device path gathers: bit for bit."""
    runs = {}
    for pipeline in ("device", "streaming"):
        settings = {
            "model": "mlp",
            "dataset": "mnist5k",
            "data_dir": str(mnist5k_dir),
            "max_train_examples": 96,
            "batch_size": 32,
            "epochs": 2,
            "augment": True,
            "data_pipeline": pipeline,
            "data_workers": 0,
            "tensorboard": False,
            "log": str(tmp_path / f"{pipeline}.jsonl"),
        }
        runs[pipeline] = fit(resolve(settings), save=False, console=Console(quiet=True))
    assert_same_leaves(runs["device"].model.variables, runs["streaming"].model.variables)
    assert runs["device"].metrics == runs["streaming"].metrics


def test_the_size_rule_picks_the_device_for_small_sets(tmp_path, folder, mnist5k_dir):
    small = build_experiment(config(tmp_path, folder, "small"))
    assert small.pipeline == "device" and small.crops is not None
    assert small.preprocessing.crop_fraction == 0.875  # The evaluation transform's.
    forced = build_experiment(config(tmp_path, folder, "forced", data_pipeline="streaming"))
    assert forced.pipeline == "streaming" and forced.crops is None
    assert forced.feed.reader.transform == RandomResizedCrop((28, 28), 1)
    assert forced.preprocessing == small.preprocessing
    digits = build_experiment(TrainConfig(model="mlp", data_dir=str(mnist5k_dir)))
    assert digits.pipeline == "device" and digits.preprocessing.crop_fraction is None


def test_a_dead_worker_stops_the_run_and_keeps_its_checkpoints(tmp_path, folder, monkeypatch):
    """A worker process killed mid-run: reported, and the run stops; nothing hangs."""
    killer = KillingCrop((28, 28), 1)
    run = config(tmp_path, folder, "dies", data_pipeline="streaming", data_workers=1)
    real_build = build_experiment

    def with_killer(config, dataset=None):
        experiment = real_build(config, dataset)
        experiment.feed.reader.transform = killer
        return experiment

    monkeypatch.setattr("zoo.training.loop.build_experiment", with_killer)
    started = time.monotonic()
    with pytest.raises(DataWorkerDied, match=r"a data-loading worker process died") as info:
        fit(run, console=Console(quiet=True))
    assert time.monotonic() - started < TIMEOUT_S
    # How many of the batches read before the death the run trains first depends on when the
    # loader notices it; what it reports is saved, and the first epoch's checkpoint is kept.
    stopped = re.search(
        r"\(stopped at epoch 2, step (\d); step (\d+) of 'dies' is saved: continue with --resume\)",
        str(info.value),
    )
    assert stopped, str(info.value)
    saved = hub.read_metadata("dies", registry=run.registry)["step"]
    assert saved == int(stopped[2]) and 5 <= saved <= 9


class KillingCrop(RandomResizedCrop):
    """The training transform, which kills its worker process at the last example of epoch 2
    (step 10): the steps before are read, and trained, before the run notices."""

    def __call__(self, source, rng, what):
        if rng.bit_generator.seed_seq.entropy[2:] == [1, 39]:  # [stream, seed, epoch, position]
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(source, rng, what)


def test_an_image_that_fails_mid_run_is_a_one_line_error_naming_it(tmp_path, folder, capsys):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(folder), str(broken)], check=True)
    path = next(p for p in sorted((broken / "train").rglob("*.jpg")))
    PIL.Image.open(PHOTOS[0]).convert("RGB").resize((300, 200)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # The header reads; the pixels do not.
    run = config(tmp_path, broken, "broken", data_pipeline="streaming", data_workers=0)
    status = cli.main(["train", *train_flags(run)])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error, error
    assert error.startswith(f"zoo train: error: {path}: cannot decode the image")
    assert "(stopped at epoch 1, step" in error


def test_zoo_eval_and_predict_cut_pictures_by_the_evaluation_transform(tmp_path, folder, capsys):
    run = config(tmp_path, folder, "evaluated", data_pipeline="streaming", data_workers=0)
    result = fit(TrainConfig.from_dict({**run.to_dict(), "epochs": 1}), console=Console(quiet=True))
    assert cli.main(["eval", "evaluated", "--registry", run.registry]) == 0
    printed = capsys.readouterr().out
    assert f"on {run.dataset} held-out split (10 images)" in printed
    assert f"accuracy {result.metrics['val_accuracy']:.2%}" in printed
    photo = tmp_path / "photo.png"
    PIL.Image.open(PHOTOS[0]).save(photo)
    assert cli.main(["predict", "evaluated", str(photo), "--registry", run.registry]) == 0
    assert str(photo) in capsys.readouterr().out
    loaded = hub.load("evaluated", registry=run.registry)
    picture = read_images(photo, loaded.preprocessing.source_shape, 0.875)
    np.testing.assert_array_equal(picture[0], centre_crop(photo, (28, 28), channels=1))


def test_the_python_api_takes_data_sets_by_name_or_path(folder):
    from zoo.training import configure

    assert configure("mlp", data=f"folder:{folder}").dataset == f"folder:{folder}"
    with pytest.raises(ValueError, match="name two data sets"):
        configure("mlp", data=f"folder:{folder}", dataset="mnist5k")

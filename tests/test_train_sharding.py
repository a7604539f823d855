"""Data parallelism: 8 forced CPU devices train like 1 device; the batch must split evenly.

The device count is fixed when JAX starts, so the 8-device runs are subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from rich.console import Console

from zoo import hub
from zoo.training.config import TrainConfig
from zoo.training.loop import fit
from zoo.training.sharding import check_batch_size, make_mesh

EIGHT_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
FIT = """
import json, sys, jax, jax.numpy as jnp
from rich.console import Console
from zoo.training.config import TrainConfig
from zoo.training.experiment import build_experiment
from zoo.training.loop import fit
from zoo.training.pipeline import prepare_batch
assert jax.local_device_count() == 8, jax.devices()
config = TrainConfig(**json.loads(sys.argv[1]))
fit(config, console=Console(quiet=True))

# The batch really is split: each device holds 32 / 8 = 4 of its examples.
experiment = build_experiment(config)
feed = experiment.feed
batch = jax.jit(lambda inputs: prepare_batch(
    feed.raw_batch(inputs, jnp.int32(0)), jax.random.key(0),
    preprocessing=experiment.preprocessing, augmentation=experiment.augmentation,
))(feed.compile_inputs())
shards = batch["image"].addressable_shards
assert sorted(s.device.id for s in shards) == list(range(8)), shards
assert {s.data.shape for s in shards} == {(4, 32, 32, 1)}, [s.data.shape for s in shards]
"""


def test_eight_devices_give_the_result_of_one(tmp_path):
    settings = {
        "model": "lenet5",
        "dataset": "synthetic",
        "epochs": 1,
        "batch_size": 32,
        "max_train_examples": 128,
        "augment": True,
        "warmup_epochs": 0.0,
        "log": str(tmp_path / "log.jsonl"),
    }
    eight = TrainConfig(**settings, registry=str(tmp_path / "eight"))
    one = TrainConfig(**settings, registry=str(tmp_path / "one"))
    subprocess.run(
        [sys.executable, "-c", FIT, json.dumps(eight.to_dict())],
        env=EIGHT_DEVICES,
        check=True,
        timeout=300,
    )
    assert jax.local_device_count() == 1
    fit(one, console=Console(quiet=True))

    on_eight = hub.load(eight.run_name, registry=eight.registry)
    on_one = hub.load(one.run_name, registry=one.registry)
    assert (on_eight.meta["devices"], on_one.meta["devices"]) == (8, 1)
    assert on_eight.step == on_one.step == 4
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        on_eight.variables,
        on_one.variables,
    )
    for key, value in on_one.meta["metrics"].items():
        assert on_eight.meta["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_a_batch_that_does_not_split_over_the_devices_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.cli",
            "train",
            "mlp",
            "--dataset",
            "synthetic",
            "--batch-size",
            "12",
            "--registry",
            str(tmp_path),
        ],
        env=EIGHT_DEVICES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "zoo train: error: batch size 12 does not divide evenly over 8 devices; "
        "use a multiple of 8, e.g. 8 or 16"
    )
    assert not (tmp_path / "mlp-synthetic").exists()


def test_check_batch_size_on_one_device():
    check_batch_size(7, make_mesh())  # Anything splits over one device.

"""Two `zoo train` processes on 127.0.0.1 train as one; a dying one stops the other.

Each worker is a real OS process with one CPU device, joined by `--coordinator`; the test
process itself is the single process that compares and loads.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from rich.console import Console
from test_image_data import write_digit_folder

from zoo import cli, hub
from zoo.data import load_dataset, process_rows
from zoo.distributed import detected_cluster
from zoo.training.config import resolve
from zoo.training.loop import fit

# `zoo train` (`zoo.cli.main`) plus two test hooks: each checkpoint's parameters as this process
# holds them go to OUT-<process index>.npz, and with DIE_AT > 0 the process kills itself (SIGKILL)
# at its DIE_AT-th Orbax write: the second checkpoint's variables when DIE_AT is 3, inside a save
# whose staging folder exists.
WORKER = r"""
import os, signal, sys
import jax, numpy as np
from zoo.training import loop
from zoo import cli
from zoo.hub import store

out, die_at = sys.argv[1], int(sys.argv[2])
save_checkpoint, save_tree, writes = loop.save_checkpoint, store.save_tree, []

def recording_save_checkpoint(experiment, state, **kwargs):
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    np.savez(f"{out}-{jax.process_index()}.npz", **{
        jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0)) for path, leaf in leaves})
    return save_checkpoint(experiment, state, **kwargs)

def dying_save_tree(directory, tree):
    writes.append(directory)
    if len(writes) == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_tree(directory, tree)

loop.save_checkpoint, store.save_tree = recording_save_checkpoint, dying_save_tree
sys.exit(cli.main(sys.argv[3:]))
"""


def worker_env() -> dict[str, str]:
    """This test's environment (its registry and compilation cache included) with one CPU device
    per process, whatever the calling environment forces."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}


RUN = ["lenet5", "--dataset", "mnist5k", "--max-train-examples", "256", "--batch-size", "32"]
SAME_RUN = {"model": "lenet5", "dataset": "mnist5k", "max_train_examples": 256, "batch_size": 32}
STEPS_PER_EPOCH = 8  # 256 examples / global batch 32, 16 per process
WORKER_TIMEOUT_S = 120
DEATH_NOTICE_BOUND_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_workers(
    tmp_path: Path, name: str, *flags: str, die_at: dict[int, int] | None = None
) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a two-process `zoo train RUN flags --name name`, both started."""
    worker = ["timeout", "-k", "5", str(WORKER_TIMEOUT_S), sys.executable, "-c", WORKER]
    run = ["train", *RUN, *flags, "--name", name, "--registry", str(tmp_path / "registry")]
    log = ["--log", str(tmp_path / f"{name}.jsonl")]
    launch = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    hooks = {
        process_id: [str(tmp_path / name), str((die_at or {}).get(process_id, 0))]
        for process_id in (0, 1)
    }
    return [
        subprocess.Popen(
            [*worker, *hooks[process_id], *run, *log, *launch, "--process-id", str(process_id)],
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for process_id in (0, 1)
    ]


def finish(worker: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = worker.communicate(timeout=WORKER_TIMEOUT_S + 10)
    return worker.returncode, stdout, stderr


def saved_params(tmp_path: Path, name: str, process: int) -> dict[str, np.ndarray]:
    with np.load(tmp_path / f"{name}-{process}.npz") as arrays:
        return dict(arrays)


def test_two_processes_train_like_one_and_save_one_checkpoint(tmp_path):
    workers = start_workers(tmp_path, "two", "--epochs", "1")
    # Meanwhile (the workers mostly wait on each other), one process trains the same run.
    registry, log = str(tmp_path / "registry"), str(tmp_path / "one.jsonl")
    fit(
        resolve({**SAME_RUN, "epochs": 1, "name": "one", "registry": registry, "log": log}),
        console=Console(quiet=True),
    )
    results = [finish(worker) for worker in workers]
    for process_id, (status, stdout, stderr) in enumerate(results):
        assert status == 0, f"process {process_id} failed:\n{stdout}\n{stderr}"
    (_, primary_out, _), (_, other_out, _) = results
    assert "in 2 processes" in primary_out and "saved two step 8" in primary_out
    # Only the primary prints, and neither prints Gloo's connection line (C++, on stdout).
    assert not re.search(r"lenet5 on|epoch|saved", other_out), other_out
    assert "[Gloo]" not in primary_out + other_out, (primary_out, other_out)

    # Both processes hold the same parameters (and they equal one process's, below).
    on_0, on_1 = (saved_params(tmp_path, "two", p) for p in (0, 1))
    assert on_0.keys() == on_1.keys()
    for key in on_0:
        np.testing.assert_array_equal(on_0[key], on_1[key], err_msg=key)

    # The two-process checkpoint is one ordinary registry entry, loaded by this single process.
    two, alone = hub.load("two", registry=registry), hub.load("one", registry=registry)
    assert (two.step, two.meta["devices"], two.meta["processes"]) == (STEPS_PER_EPOCH, 2, 2)
    assert [r.step for r in hub.list_checkpoints(registry) if r.name == "two"] == [8]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        two.variables,
        alone.variables,
    )
    images = load_dataset("mnist5k").test.images[:200]
    np.testing.assert_array_equal(two.predict(images), alone.predict(images))
    for key, value in alone.meta["metrics"].items():
        assert two.meta["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_two_processes_streaming_a_folder_train_like_one(tmp_path, mnist5k_dir):
    """Each process reads, decodes and crops only its half of every batch, with the random
    choices of each example's position: together, the batches of one process."""
    digits = load_dataset("mnist5k", data_dir=mnist5k_dir).train
    folder = write_digit_folder(tmp_path / "digits", digits, 8, held_out=2)
    streamed = {
        "dataset": f"folder:{folder}",
        "batch_size": 16,
        "epochs": 1,
        "augment": True,
        "data_pipeline": "streaming",
        "data_workers": 0,
    }
    flags = [
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
        for k, v in streamed.items()
    ]
    workers = start_workers(tmp_path, "two", *flags)
    registry, log = str(tmp_path / "registry"), str(tmp_path / "one.jsonl")
    one = {**SAME_RUN, **streamed, "name": "one", "registry": registry, "log": log}
    fit(resolve(one), console=Console(quiet=True))
    for process_id, (status, stdout, stderr) in enumerate(map(finish, workers)):
        assert status == 0, f"process {process_id} failed:\n{stdout}\n{stderr}"
        assert process_id or "data streamed (threads)" in stdout
    two, alone = hub.load("two", registry=registry), hub.load("one", registry=registry)
    assert two.meta["processes"] == 2 and two.step == alone.step == 5
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        two.variables,
        alone.variables,
    )
    for key, value in alone.meta["metrics"].items():
        assert two.meta["metrics"][key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize("victim", [0, 1], ids=["primary dies", "other dies"])
def test_a_process_killed_mid_save_stops_the_other_and_leaves_no_half_checkpoint(tmp_path, victim):
    # The victim dies writing the second checkpoint (epoch 2); the first is committed.
    workers = start_workers(
        tmp_path, "dying", "--epochs", "2", "--heartbeat-timeout", "10", die_at={victim: 3}
    )
    status, _, _ = finish(workers[victim])
    died = time.monotonic()
    assert status in (-signal.SIGKILL, 128 + signal.SIGKILL), status
    status, stdout, stderr = finish(workers[1 - victim])
    assert time.monotonic() - died < DEATH_NOTICE_BOUND_S
    assert status != 0, stdout
    # Ours, or JAX's own when its coordination service ends the process first.
    assert re.search(r"as one does when another process dies|another task died", stderr), stderr

    registry = tmp_path / "registry"
    assert [r.step for r in hub.list_checkpoints(registry)] == [STEPS_PER_EPOCH]
    assert hub.load("dying", registry=registry).meta["epoch"] == 1
    visible = sorted(p.name for p in (registry / "dying").iterdir() if not p.name.startswith("."))
    assert visible == [f"step_{STEPS_PER_EPOCH}"]

    # The staging folder a dead primary leaves behind goes with the next save. (A surviving
    # primary deletes its own, unless JAX's coordination service ends it first.)
    if victim == 0:
        assert len(list((registry / "dying").glob(".staging-*"))) == 1
    first = hub.load("dying", registry=registry)
    hub.save(
        "dying",
        model_name="lenet5",
        model_config={},
        variables=first.variables,
        step=2 * STEPS_PER_EPOCH,
        registry=registry,
    )
    assert not list((registry / "dying").glob(".staging-*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--process-id", "0"], "also pass --coordinator and --num-processes"),
        (["--coordinator", "node0", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (
            ["--coordinator", "node0:80", "--num-processes", "2", "--process-id", "2"],
            "--process-id must be in [0, 1] for --num-processes 2, got 2",
        ),
    ],
)
def test_bad_launch_flags_are_one_line_errors_before_anything_starts(flags, message, capsys):
    assert cli.main(["train", "lenet5", *flags]) == 2
    assert message in capsys.readouterr().err


SLURM_STEP = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[0-1]",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
}


@pytest.mark.parametrize(("tasks", "detected"), [("2", "SlurmCluster"), ("1", None)])
def test_a_cluster_is_joined_only_when_it_launched_several_processes(tasks, detected, monkeypatch):
    for variable, value in {**SLURM_STEP, "SLURM_NTASKS": tasks}.items():
        monkeypatch.setenv(variable, value)
    assert detected_cluster() == detected


def test_a_plain_run_detects_no_cluster(monkeypatch):
    for variable in (
        *SLURM_STEP,
        "SLURM_NTASKS",
        "OMPI_MCA_orte_hnp_uri",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(variable, raising=False)
    assert detected_cluster() is None


def test_process_shares_cover_every_row_once_in_order():
    for count in (0, 1, 7, 1000):
        for processes in (1, 2, 3, 8):
            shares = [process_rows(count, p, processes) for p in range(processes)]
            assert [row for share in shares for row in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1

"""Real processes: SIGKILL in the middle of saves, two savers writing one name at once, and two
`zoo train` runs under one name."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from zoo import hub

NAME = "lenet5-mnist"

# Saves `lenet5` variables filled with the step number, plus a train state `blob` of that value,
# one step after another. Prints "ready" once imported, then waits for "<first step> <count>" on
# stdin, so that a test can start several savers (imports are the slow part) and release them
# together. Prints "saved <step>" after each save returns, or "exists <step>" for a step taken.
SAVER = r"""
import sys
import jax, numpy as np, zoo
from zoo import hub
from zoo.hub.store import expected_variables

name, registry, blob_size, stride, max_to_keep, final_step = sys.argv[1:]
_, abstract = expected_variables("lenet5", zoo.model_info("lenet5").config())
print("ready", flush=True)
first, count = map(int, sys.stdin.readline().split())
steps = [first + i * int(stride) for i in range(count)]
steps += [] if final_step == "-" else [int(final_step)]
for step in steps:
    try:
        hub.save(name, model_name="lenet5", model_config={}, step=step, registry=registry,
                 variables=jax.tree.map(lambda s: np.full(s.shape, step, s.dtype), abstract),
                 train_state={"blob": np.full(int(blob_size), step, np.float32)},
                 max_to_keep=None if max_to_keep == "-" else int(max_to_keep))
    except FileExistsError:
        print("exists", step, flush=True)
    else:
        print("saved", step, flush=True)
"""


def start_saver(registry, *, blob_size, stride=1, max_to_keep="-", final_step="-"):
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SAVER,
            NAME,
            str(registry),
            str(blob_size),
            str(stride),
            str(max_to_keep),
            str(final_step),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process


def release(process, first_step, count):
    assert process.stdout.readline() == "ready\n"
    process.stdin.write(f"{first_step} {count}\n")
    process.stdin.flush()


def reported(process):
    return [line.split() for line in process.stdout.read().splitlines()]


def assert_every_listed_step_loads(registry, blob_size):
    steps = [record.step for record in hub.list_checkpoints(registry)]
    for step in steps:
        blob = jax.ShapeDtypeStruct((blob_size,), np.float32)
        loaded = hub.load(NAME, step=step, registry=registry, train_state={"blob": blob})
        assert all((np.asarray(leaf) == step).all() for leaf in jax.tree.leaves(loaded.variables))
        assert (np.asarray(loaded.train_state["blob"]) == step).all()
    return steps


def hidden_entries(registry):
    return sorted(
        p.name for p in (registry / NAME).iterdir() if p.name.startswith(".") and p.name != ".lock"
    )


def test_sigkill_during_saves_leaves_only_loadable_steps(tmp_path):
    blob_size = 2_000_000  # 8 MB: a save takes long enough to be killed inside it.
    rounds = 3
    savers = [start_saver(tmp_path, blob_size=blob_size, max_to_keep=2) for _ in range(rounds)]
    delays = random.Random(0)
    killed_mid_save = 0
    for saver in savers:
        latest = hub.latest_step(NAME, registry=tmp_path)
        release(saver, first_step=(latest or 0) + 1, count=1000)
        time.sleep(delays.uniform(0.3, 1.5))
        saver.kill()
        saver.wait()

        saved = [int(step) for _, step in reported(saver)]
        steps = assert_every_listed_step_loads(tmp_path, blob_size)
        assert saved and max(saved) <= steps[-1]
        assert len(steps) <= 3  # Two kept, plus one if killed between commit and retention.
        killed_mid_save += any(name.startswith(".staging-") for name in hidden_entries(tmp_path))
    assert killed_mid_save, "no kill landed inside a save; the test proved nothing"

    # The next save cleans up what the killed writers left behind.
    latest = hub.latest_step(NAME, registry=tmp_path)
    hub.save(
        NAME,
        model_name="lenet5",
        model_config={},
        step=latest + 1,
        registry=tmp_path,
        variables=hub.load(NAME, registry=tmp_path).variables,
    )
    assert hidden_entries(tmp_path) == []


def test_two_concurrent_savers_of_one_name(tmp_path):
    blob_size = 250_000
    count = 6
    savers = [
        start_saver(tmp_path, blob_size=blob_size, stride=2, final_step=1000) for _ in range(2)
    ]
    for first, saver in enumerate(savers):  # Even steps from one process, odd from the other.
        release(saver, first_step=first, count=count)
    results = [reported(saver) for saver in savers]
    assert [saver.wait() for saver in savers] == [0, 0]

    assert sorted(" ".join(lines[-1]) for lines in results) == ["exists 1000", "saved 1000"]
    steps = assert_every_listed_step_loads(tmp_path, blob_size)
    assert steps == [*range(2 * count), 1000]
    assert hidden_entries(tmp_path) == []


def zoo_train(registry, *flags):
    """`zoo train lenet5 ... --name c --registry REGISTRY` as its own process, on a small subset."""
    main = "import sys; from zoo.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", main, "train", "lenet5", "--name", "c"]
    command += ["--registry", str(registry), "--max-train-examples", "300", *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_of(registry, name="c"):
    return {record.step: record for record in hub.list_checkpoints(registry) if record.name == name}


@pytest.mark.slow
def test_a_second_run_under_a_live_runs_name_is_refused_and_prunes_only_its_own(
    tmp_path, mnist5k_env
):
    # Issue 13's scenario: a long run saves under "c"; a second one with --max-to-keep 1 starts.
    first = zoo_train(tmp_path, "--epochs", "500", "--batch-size", "30")  # 10 steps an epoch
    deadline = time.monotonic() + 240
    while not (tmp_path / "c" / "step_10").is_dir():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run saved nothing in time"
        time.sleep(0.2)

    second = ["--epochs", "4", "--batch-size", "100", "--max-to-keep", "1"]
    _, err = zoo_train(tmp_path, *second).communicate(timeout=240)
    assert first.poll() is None, "the first run ended before the second one started"
    assert err.count("\n") == 1, err
    assert "zoo train: error: another run is training 'c'" in err and "pid" in err

    first.kill()  # SIGKILL: its claim dies with it, and its saved steps stay.
    first.wait()
    first_steps = set(steps_of(tmp_path))
    assert first_steps and all(step % 10 == 0 for step in first_steps)

    retry = zoo_train(tmp_path, *second)
    _, err = retry.communicate(timeout=240)
    assert retry.returncode == 0, err
    final = steps_of(tmp_path)
    assert first_steps <= set(final)  # Nothing of the first run was pruned by the second...
    second_steps = sorted(set(final) - first_steps)
    # ...which kept its last of 4 saves (3 steps an epoch), and perhaps its best one.
    assert second_steps[-1] == max(first_steps) + 4 * 3 and len(second_steps) <= 2
    run_ids = {hub.read_metadata("c", step=step, registry=tmp_path)["run_id"] for step in final}
    assert len(run_ids) == 2

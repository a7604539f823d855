"""Ctrl-C and SIGTERM: one line, exit status 128 + the signal, never a traceback or a crash.

Real processes get real signals, each at a phase the process announces itself: an import line
of `python -X importtime`, the "compiling" line, an epoch's line (printed once its checkpoint is
saved), or the "ready" line of a small script around `zoo.interrupts`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zoo import hub

TIMEOUT = 120  # Seconds for a run to reach its marker or end; a hang fails the test.


class Process:
    """A child whose stdout and stderr lines are read as they come, by two threads."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        for name, stream, kept in (
            ("out", self.popen.stdout, self.out),
            ("err", self.popen.stderr, self.err),
        ):
            threading.Thread(target=self._read, args=(name, stream, kept), daemon=True).start()

    def _read(self, name: str, stream, kept: list[str]) -> None:
        for line in stream:
            kept.append(line)
            self.lines.put((name, line))
        self.lines.put((name, ""))

    def wait_for(self, pattern: str) -> str:
        """Blocks until a line matches `pattern`; fails if the process ends first."""
        ended = 0
        while ended < 2:
            try:
                _, line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                self.popen.kill()
                pytest.fail(f"no line matched {pattern!r} in {TIMEOUT} s")
            if not line:
                ended += 1
            elif re.search(pattern, line):
                return line
        pytest.fail(f"the process ended before {pattern!r}: {''.join(self.err)[-2000:]}")

    def finish(self) -> tuple[int, list[str]]:
        """Exit status and the stderr lines (without -X importtime's)."""
        try:
            status = self.popen.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail("the process did not stop")
        self.popen.stdout.close()
        self.popen.stderr.close()
        err = [line for line in "".join(self.err).splitlines() if not line.startswith("import ")]
        return status, err


def assert_one_line(status: int, err: list[str], signum: int) -> str:
    assert status == 128 + signum, (status, err)  # Never 139 (SIGSEGV), never 0 or 1.
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "Exception ignored" not in err[0]
    return err[0]


def zoo_train(tmp_path: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "zoo.cli",
        "train",
        "mlp",
        "--dataset",
        "synthetic",
        "--max-train-examples",
        "256",
        "--registry",
        str(tmp_path / "registry"),
        "--log",
        str(tmp_path / "log.jsonl"),
        "--name",
        "run",
        *flags,
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_importing_jax_is_one_line(tmp_path, signum):
    argv = [sys.executable, "-X", "importtime", *zoo_train(tmp_path)[1:]]
    process = Process(argv)
    process.wait_for(r"\| +jax\._src\.")  # JAX is being imported.
    process.popen.send_signal(signum)
    line = assert_one_line(*process.finish(), signum)
    assert line == f"zoo: interrupted ({signal.Signals(signum).name})"


def test_ctrl_c_while_compiling_stops_at_once_and_does_not_suggest_resuming(tmp_path):
    # No checkpoint before the last epoch: wherever the signal lands, nothing is saved.
    process = Process(zoo_train(tmp_path, "--epochs", "1000", "--checkpoint-every", "1000"))
    process.wait_for("compiling the training and evaluation steps")
    process.popen.send_signal(signal.SIGINT)
    line = assert_one_line(*process.finish(), signal.SIGINT)
    assert line == (
        "zoo train: interrupted (SIGINT) before its first checkpoint; nothing of run was saved"
    )
    assert hub.latest_step("run", registry=tmp_path / "registry") is None


def test_sigterm_while_training_names_the_saved_step_and_how_to_resume(tmp_path):
    process = Process(zoo_train(tmp_path, "--epochs", "1000"))
    process.wait_for(r"^epoch 1/1000  train_loss")  # Printed once epoch 1 is saved.
    process.popen.send_signal(signal.SIGTERM)
    line = assert_one_line(*process.finish(), signal.SIGTERM)
    registry = tmp_path / "registry"
    step = hub.latest_step("run", registry=registry)
    assert line == (
        f"zoo train: interrupted (SIGTERM); step {step} of run is saved: continue with "
        f"`zoo train --resume --name run --registry {registry}`"
    )
    assert hub.load("run", registry=registry).step == step  # Whole and verified.
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["message"] == "SIGTERM"


# A script around `zoo.interrupts` alone (no JAX: it starts in a fraction of a second).
SCRIPT = r"""
import sys, time
from zoo import interrupts

region = sys.argv[1]
with interrupts.handled("probe"):
    interrupts.report(lambda signal: f"probe: stopped by {signal}")
    try:
        if region == "responsive":
            with interrupts.responsive():
                print("ready", flush=True)
                for _ in range(3000):  # A loop with safe points, as training's.
                    interrupts.check()
                    time.sleep(0.01)
        elif region == "stuck":  # A responsive region that never checks: one long step.
            with interrupts.responsive():
                print("ready", flush=True)
                while interrupts._state.signum is None:  # Until the first is recorded.
                    time.sleep(0.01)
                print("recorded", flush=True)
                time.sleep(30)
        elif region == "deferred":
            with interrupts.deferred():
                print("ready", flush=True)
                time.sleep(1)  # The signal arrives here, and waits.
                print("finished the write", flush=True)
        else:
            print("ready", flush=True)
            time.sleep(30)  # Not checking: the signal ends the process at once.
        print("not interrupted", flush=True)
    except interrupts.Interrupted as stop:
        print(interrupts.line(stop.signum), file=sys.stderr)
        sys.exit(stop.exit_status)
"""


@pytest.mark.parametrize(
    ("region", "signum", "printed"),
    [
        ("responsive", signal.SIGTERM, []),
        ("deferred", signal.SIGINT, ["finished the write"]),
        ("none", signal.SIGINT, []),
        ("none", signal.SIGTERM, []),
    ],
)
def test_where_a_signal_is_acted_on(region, signum, printed):
    process = Process([sys.executable, "-c", SCRIPT, region])
    process.wait_for("^ready")
    process.popen.send_signal(signum)
    line = assert_one_line(*process.finish(), signum)
    assert line == f"probe: stopped by {signal.Signals(signum).name}"
    assert [line.strip() for line in process.out] == ["ready", *printed]


def test_a_second_signal_ends_a_responsive_region_that_does_not_check():
    process = Process([sys.executable, "-c", SCRIPT, "stuck"])
    process.wait_for("^ready")
    process.popen.send_signal(signal.SIGINT)
    process.wait_for("^recorded")  # The first one waits for a check that never comes.
    process.popen.send_signal(signal.SIGINT)
    line = assert_one_line(*process.finish(), signal.SIGINT)
    assert line == "probe: stopped by SIGINT"


def test_outside_the_command_line_nothing_is_installed():
    code = (
        "import signal, threading; from zoo import interrupts\n"
        # Python's own handler whatever the parent left (a shell's background job ignores it).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "def run():\n"
        "    with interrupts.handled('x'):\n"
        "        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
        "with interrupts.handled('x'):\n"
        "    print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False", "True"]


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    launch = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    processes = [
        Process(zoo_train(tmp_path, "--epochs", "1000", "--batch-size", "32", *launch, str(i)), env)
        for i in (0, 1)
    ]
    processes[0].wait_for(r"^epoch 1/1000  train_loss")
    processes[0].popen.send_signal(signal.SIGINT)
    (status, err), (other_status, other_err) = (process.finish() for process in processes)
    assert status == 130 and other_status == 1, (err, other_err)
    step = hub.latest_step("run", registry=tmp_path / "registry")
    assert err[-1].startswith(f"zoo train: interrupted (SIGINT); step {step} of run is saved")
    assert "Traceback" not in "".join(err + other_err)
    # The coordination service's own C++ threads may log the lost peer after our line.
    stopped = [line for line in other_err if line.startswith("zoo train: error: ")]
    assert stopped and stopped[-1].startswith("zoo train: error: process 1 of 2 stopped"), other_err

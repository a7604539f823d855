"""Several processes training as one: which process this is, and joining the others.

A multi-process run (`zoo train` on several hosts) is one program run by every process;
whatever touches shared files or the terminal is done by one of them, the primary
(`jax.process_index() == 0`), while the others wait at a `barrier` or take the value it decided
(`from_primary`). With a single process, every run but a multi-process one, these cost nothing:
`is_primary()` is True, `barrier` returns at once, `from_primary` returns its argument. The
mesh the processes' devices form is `zoo.training.sharding`'s; the kernels' rule for a batch
split over devices is `zoo.ops.sharding`'s.

`zoo train` runs as one process per host. Before any other JAX work, `initialize` connects it to
the other processes when

- the command line names the run: `--coordinator HOST:PORT --num-processes N --process-id I`
  (all three; process 0 serves the coordinator on PORT), or
- JAX detects a cluster that launched several processes: a Cloud TPU pod slice, SLURM (`srun`),
  Open MPI (`mpirun`) or Kubernetes, where `jax.distributed.initialize()` finds everything
  itself.

Otherwise it starts nothing, and a plain run stays the single process it always was. Once
connected, `jax.devices()` lists every process's devices: the mesh spans them all, each process
reads only its share of the data (`zoo.data`), and the primary alone prints, logs and commits
checkpoints (`zoo.hub.disk`).

A process that dies must not leave the others waiting for ever:

- on CPU a collective with a dead peer fails at once (gloo: "Connection closed by peer");
- where a collective would wait instead, the coordination service declares a process dead
  once it has sent no heartbeat for `heartbeat_timeout` seconds, and JAX ends every other
  process ("... the JAX distributed service detected fatal errors. This most likely indicates
  that another task died");
- `run_as_peer` makes a failing process exit at once, after saying why, rather than wait in
  JAX's exit barrier for peers that are waiting for it;
- SIGTERM stops a process, as it stops a single one: JAX's preemption service, which would take
  it as a notice to checkpoint (and otherwise ignore it), is off.

No checkpoint is ever half-visible: a step appears by one rename once complete, and a staging
folder left by a dead primary is deleted by the next save (`zoo.hub.disk`).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from zoo import interrupts, jax_internals
from zoo.errors import InvalidValueError, ZooError


def is_primary() -> bool:
    """True in the process that writes shared files and prints: process 0, or the only one."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Returns once every process has reached the barrier `name` (the same in all of them)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def from_primary(value: int) -> int:
    """The primary's `value` in every process; `value` must fit in a signed 32-bit integer.

    (32 bits because JAX, without `jax_enable_x64`, narrows 64-bit integers.)
    """
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


# How long a silent process is waited for before it is declared dead. JAX's default is 100 s;
# heartbeats come from a thread of their own, so a process busy compiling or saving still sends
# them, and a shorter wait only shortens how long the others wait for a dead one.
HEARTBEAT_TIMEOUT_SECONDS = 30
# How long `initialize` waits for all processes to join (JAX's default): the hosts of a cluster
# may start minutes apart. A process still alone then is aborted by JAX.
INITIALIZATION_TIMEOUT_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a multi-process run; no coordinator: a detected cluster, or none.

    Attributes:
      coordinator: "HOST:PORT" where process 0 serves the coordination service (every process
        passes the same); with it, `num_processes` and `process_id` are required.
      num_processes: how many processes train together (one per host, usually).
      process_id: this process's index, 0 to num_processes - 1; 0 is the primary.
      heartbeat_timeout: seconds without a heartbeat after which a process counts as dead.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        named = {
            "--coordinator": self.coordinator,
            "--num-processes": self.num_processes,
            "--process-id": self.process_id,
        }
        missing = [flag for flag, value in named.items() if value is None]
        if missing and len(missing) < len(named):
            raise InvalidValueError(
                f"--coordinator, --num-processes and --process-id go together: "
                f"also pass {' and '.join(missing)}"
            )
        if self.coordinator is not None:
            _check_coordinator(self.coordinator)
            if self.num_processes < 1:
                raise InvalidValueError(
                    f"--num-processes must be at least 1, got {self.num_processes}"
                )
            if not 0 <= self.process_id < self.num_processes:
                raise InvalidValueError(
                    f"--process-id must be in [0, {self.num_processes - 1}] for "
                    f"--num-processes {self.num_processes}, got {self.process_id}"
                )
        if self.heartbeat_timeout < 1:
            raise InvalidValueError(
                f"--heartbeat-timeout must be at least 1 second, got {self.heartbeat_timeout}"
            )


def initialize(launch: Launch) -> None:
    """Joins the run `launch` names, or the cluster JAX detects; otherwise does nothing.

    Call before any other JAX use: JAX refuses to start its distributed runtime afterwards. It
    returns once every process has joined, or JAX aborts the process after
    `INITIALIZATION_TIMEOUT_SECONDS`.
    """
    if launch.coordinator is not None:
        where = (
            f"the {launch.num_processes}-process run at {launch.coordinator} as process "
            f"{launch.process_id}"
        )
        settings = {
            "coordinator_address": launch.coordinator,
            "num_processes": launch.num_processes,
            "process_id": launch.process_id,
        }
    elif (cluster := detected_cluster()) is not None:
        where, settings = f"the processes of the {cluster} cluster", {}
    else:
        return
    # JAX's own message, if the others never come, speaks of a task that died: say what this
    # process is waiting for, beforehand.
    print(
        f"zoo train: joining {where} (waiting up to {INITIALIZATION_TIMEOUT_SECONDS} s for "
        "all processes)",
        file=sys.stderr,
        flush=True,
    )
    # JAX's preemption service would take SIGTERM as a notice to checkpoint at a step all
    # processes agree on, and otherwise ignore it; the loop does not take such notices, so without
    # the service SIGTERM stops a process as it stops a single one (and the others follow).
    jax.config.update("jax_enable_preemption_service", False)
    drop_native_stdout_lines(GLOO_ANNOUNCEMENT)
    jax.distributed.initialize(
        **settings,
        initialization_timeout=INITIALIZATION_TIMEOUT_SECONDS,
        heartbeat_timeout_seconds=launch.heartbeat_timeout,
    )


# Gloo, XLA's CPU collectives, prints this with std::cout, from C++, for every process at its
# first collective ("[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of ..."): no
# log level or environment variable turns it off.
GLOO_ANNOUNCEMENT = b"[Gloo] "


def drop_native_stdout_lines(prefix: bytes) -> None:
    """From now on, lines that native code writes to stdout starting with `prefix` are dropped.

    File descriptor 1 becomes a pipe that a daemon thread copies to the real stdout, minus those
    lines; Python's `sys.stdout` keeps writing to the real one directly, so a terminal stays a
    terminal for the progress bar. Native output still in the pipe at exit is flushed first.
    """
    sys.stdout.flush()
    real_stdout = os.dup(1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    sys.stdout = open(real_stdout, "w", buffering=1, closefd=False)  # noqa: SIM115

    def copy() -> None:
        with open(read_end, "rb") as lines:
            for line in lines:
                if not line.startswith(prefix):
                    os.write(real_stdout, line)

    copier = threading.Thread(target=copy, name="native-stdout-filter", daemon=True)
    copier.start()

    def drain() -> None:
        os.dup2(real_stdout, 1)  # Closes the pipe's last write end: the copier sees its end.
        copier.join(timeout=1)

    atexit.register(drain)


def detected_cluster() -> str | None:
    """The cluster environment that launched this process among several, or None.

    JAX's own detection, the one `jax.distributed.initialize()` runs: Cloud TPU (GCE, GKE),
    SLURM, Open MPI, Kubernetes (with the `kubernetes` package). An environment that launched a
    single process (`srun -n 1`, a one-host TPU VM) counts as none: there is no one to join.
    """
    for environment in jax_internals.cluster_environments():
        if (
            not environment.opt_in_only_method
            and environment.is_env_present()
            and environment.get_process_count() > 1
        ):
            return environment.__name__
    return None


def run_as_peer(run: Callable[[], int], *, command: str) -> int:
    """Runs `run` (a command returning its exit status); with several processes, exits at once
    if it fails, so that the others learn of it now rather than after JAX's timeouts.

    A normal exit waits at JAX's exit barrier for every process; a failed one would wait there
    for peers blocked in a collective with it. Exiting at once closes its connections instead,
    which fails the peers' next collective (and so they exit too).
    """
    if jax.process_count() == 1:
        return run()
    try:
        status = run()
    except BaseException as error:  # Reported here: the process must end now.
        status = _report_failure(error, command)
    if status == 0:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _report_failure(error: BaseException, command: str) -> int:
    """Prints why this process stops; returns its exit status (2: bad input, as `zoo.cli`)."""
    who = f"process {jax.process_index()} of {jax.process_count()}"
    expected = _failed_computation(error) or isinstance(error, KeyboardInterrupt | ZooError)
    if os.environ.get("ZOO_DEBUG") or not expected:
        traceback.print_exception(error)
    if _failed_computation(error):
        print(
            f"{command}: error: {who} stopped: a computation failed, as one does when another "
            "process dies or is stopped (its output then says why). Committed checkpoints are "
            "intact: continue with `--resume` on every process. XLA said: "
            + str(error).strip().splitlines()[0],
            file=sys.stderr,
        )
        return 1
    if isinstance(error, KeyboardInterrupt):  # `zoo.interrupts.Interrupted`, as `zoo.cli`.
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"{interrupts.line(signum)} ({who})", file=sys.stderr)
        return 128 + signum
    if isinstance(error, ZooError):  # As `zoo.cli` reports them.
        print(f"{command}: error: {who}: {error}", file=sys.stderr)
        return 2
    print(f"{command}: error: {who} failed: {type(error).__name__}: {error}", file=sys.stderr)
    return 1


def _failed_computation(error: BaseException) -> bool:
    """True for a computation that failed at run time (as one does when a peer dies), not input.

    XLA raises `JaxRuntimeError`, and a later call handed the failed result raises a
    `ValueError` with the same status text, e.g. "UNKNOWN: Gloo all-reduce failed: ...".
    """
    return isinstance(error, jax.errors.JaxRuntimeError) or (
        isinstance(error, ValueError) and _XLA_STATUS.match(str(error)) is not None
    )


_XLA_STATUS = re.compile(r"[A-Z][A-Z_]+: ")  # "UNKNOWN: ", "INTERNAL: ", "UNAVAILABLE: ", ...


def _check_coordinator(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValueError(
            f"--coordinator must be HOST:PORT, the address of process 0 and a free "
            f"port on it (e.g. 10.0.0.1:12355), got {address!r}"
        )

"""Ctrl-C and SIGTERM in the `zoo` command: stop in one line that says what is saved, never crash.

Python's own SIGINT handling raises `KeyboardInterrupt` wherever the main thread is when the
signal is handled: also inside a callback that JAX runs from its C++ code, which swallows it
("Exception ignored in: <function _xla_gc_callback>", and the run trains on), or while XLA's
threads are still compiling, which unwinds under them (a SIGSEGV as the process exits). So the
command line installs these handlers (`handled`, before it imports JAX) and no exception is ever
raised asynchronously. A handler only writes the signal's number to a pipe; a thread of this
module reads it and decides:

- In a `responsive()` region (the training loop, which calls `check()` between steps), the
  first signal is recorded and `check()` raises `Interrupted` at the next safe point. The run
  stops as any error stops it (the metrics log records it), and the command prints one line.
- In a `deferred()` region (writing an output file), the first signal waits for the region's
  end, which raises `Interrupted`: a file is written whole or not at all.
- Anywhere else (importing, loading data, compiling, evaluating a saved model), and on a second
  signal anywhere, the thread prints the line itself and ends the process at once with
  `os._exit`. Nothing is lost that was saved: a registry step appears by one atomic rename
  (`zoo.hub.disk`), so a process ended at any moment leaves the last committed step whole.

The line is `report(...)`'s (the command says what is saved, e.g. "step 120 of lenet5-mnist5k
is saved: continue with ..."); the exit status is 128 + the signal's number (130 for SIGINT,
143 for SIGTERM), as a shell reports a process the signal ended.

Only the main thread can install signal handlers; elsewhere (a library caller's thread)
`handled` installs nothing and Python's behaviour is unchanged. `responsive`, `deferred` and
`check` do nothing where no handler is installed, so library code may use them freely.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised at a safe point after Ctrl-C or SIGTERM (a `KeyboardInterrupt`, so that no
    `except Exception` swallows it). `exit_status` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_status = 128 + signum


class _State:
    """What the signal thread and the main thread share (under `lock`)."""

    def __init__(self, describe: Callable[[str], str]):
        self.lock = threading.Lock()
        self.describe = describe
        self.signum: int | None = None  # The first signal received, until it is acted on.
        self.count = 0
        self.responsive = 0
        self.deferred = 0
        self.reported = False  # The line is out: a later forced exit prints no second one.


_state: _State | None = None


@contextlib.contextmanager
def handled(command: str) -> Iterator[None]:
    """SIGINT and SIGTERM handled as the module docstring says while inside, by `command`
    ("zoo train"): its one line is "<command>: interrupted (SIGINT)" unless `report` says more.

    Nothing is installed outside the main thread or where handlers are installed already.
    """
    global _state
    if threading.current_thread() is not threading.main_thread() or _state is not None:
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # The C-level handler must never block.
    # The pipe first: a signal handled by `_record` must find its byte written.
    old_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, _record) for signum in SIGNALS}
    _state = state = _State(lambda name: f"{command}: interrupted ({name})")
    watcher = threading.Thread(target=_watch, args=(state, read_end), daemon=True)
    watcher.name = "zoo-interrupts"
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python, not restorable.
                signal.signal(signum, handler)
        _state = None
        os.close(write_end)  # The watcher reads the end of the pipe and stops.
        watcher.join(timeout=1)
        os.close(read_end)


def report(describe: Callable[[str], str]) -> None:
    """From now on the interrupted line is `describe(signal name)` (it may read the disk)."""
    if _state is not None:
        _state.describe = describe


def line(signum: int) -> str:
    """The one line an interrupt by `signum` prints (for the command to print once)."""
    name = signal.Signals(signum).name
    if _state is None:
        return f"interrupted ({name})"
    _state.reported = True
    return " ".join(_state.describe(name).split())


def check() -> None:
    """Raises `Interrupted` if a signal came; call at points where stopping is safe."""
    state = _state
    if state is None or state.signum is None:
        return
    with state.lock:
        signum, state.signum = state.signum, None
    if signum is not None:
        raise Interrupted(signum)


@contextlib.contextmanager
def responsive() -> Iterator[None]:
    """A region whose code calls `check()` often: a first signal waits for it."""
    with _counting("responsive"):
        yield
    check()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A region that must not be cut short (a file being written and renamed): a first signal
    waits for its end, which raises `Interrupted`."""
    with _counting("deferred"):
        yield
    check()


@contextlib.contextmanager
def _counting(region: str) -> Iterator[None]:
    state = _state
    if state is None:
        yield
        return
    with state.lock:
        setattr(state, region, getattr(state, region) + 1)
    try:
        yield
    finally:
        with state.lock:
            setattr(state, region, getattr(state, region) - 1)


def _record(signum: int, frame: object) -> None:
    """The Python-level handler: nothing (the watcher acts on the byte the C level wrote)."""


def _watch(state: _State, read_end: int) -> None:
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            with state.lock:
                state.count += 1
                first = state.count == 1
                if first:
                    state.signum = signum
                waits = first and (state.responsive or state.deferred)
            if not waits:
                _exit_now(state, signum)


def _exit_now(state: _State, signum: int) -> None:
    """Prints the line and ends the process (no Python clean-up: see the module docstring)."""
    try:
        text = state.describe(signal.Signals(signum).name)
    except Exception as error:  # The line must come out whatever the description hit.
        text = f"interrupted ({signal.Signals(signum).name}; {type(error).__name__}: {error})"
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    if os.isatty(1):  # A progress display hid the cursor and left its line unfinished.
        os.write(1, b"\x1b[?25h\n")
    if not state.reported:
        os.write(2, (" ".join(text.split()) + "\n").encode())
    os._exit(128 + signum)

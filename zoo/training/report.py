"""What a run shows and records: progress, one line per epoch, a JSONL log, TensorBoard events.

On a terminal, two rich progress bars (the epoch's and the whole run's, each with its ETA); when
output is not a terminal (a batch job's log file), a plain line about every tenth of an epoch
and one while compiling. TensorBoard event files (written by tensorboardX, no TensorFlow) go
beside the log, in a folder named after it (runs/NAME.jsonl -> runs/NAME/), so
`tensorboard --logdir runs` shows every run by name; their steps are the registry's.

The log has one JSON object per line, each with an "event": "start" (config, devices, compile
time), "epoch" (train and held-out metrics, learning rate, images/s, the fraction of the epoch's
training time spent waiting for the next batch, checkpoint step; the accuracies are top-1, with
top-5 beside them ("val_top5_accuracy") for more than 10 classes; the training loss is the
cross-entropy the step minimises, with labels smoothed by
"train_loss_label_smoothing", the held-out loss the plain one) and
"stopped" (a run ended by an exception: divergence, Ctrl-C). A resumed run appends to the same
file, so it reads as one history.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter


class _Absent(importlib.abc.MetaPathFinder):
    """Makes `import NAME` (and its submodules) fail, as if NAME were not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] == self.name:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def _summary_writer(folder: Path) -> SummaryWriter:
    """tensorboardX's writer, imported on first use without PyTorch: at import it tries `import
    torch` (bench/README.md: what that costs) only to accept torch tensors as values, and the
    zoo logs floats. Where torch is imported already, tensorboardX sees it as usual."""
    absent = None if "torch" in sys.modules else _Absent("torch")
    if absent is not None:
        sys.meta_path.insert(0, absent)
    try:
        from tensorboardX import SummaryWriter
    finally:
        if absent is not None:
            sys.meta_path.remove(absent)
    return SummaryWriter(str(folder))


def host_metrics(totals: dict[str, Any], prefix: str) -> dict[str, float]:
    """Sums fetched from the device -> {prefix_loss[, prefix_accuracy[, prefix_top5_accuracy]]}
    means; `prefix_accuracy` is top-1."""
    count = float(totals["count"])
    metrics = {f"{prefix}_loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:  # A classifier's; an autoencoder has a loss only.
        metrics[f"{prefix}_accuracy"] = float(totals["correct"]) / count
    if "correct_top5" in totals:  # More than 10 classes (`zoo.training.step`).
        metrics[f"{prefix}_top5_accuracy"] = float(totals["correct_top5"]) / count
    return metrics


def format_metrics(metrics: dict[str, float], labels: dict[str, str], sep: str = "  ") -> str:
    """`label value` for each key of `labels` that `metrics` has; accuracies as percentages."""
    return sep.join(
        f"{label} {metrics[key]:.2%}" if key.endswith("accuracy") else f"{label} {metrics[key]:.4f}"
        for key, label in labels.items()
        if key in metrics
    )


def tensorboard_dir(log_path: Path) -> Path:
    """Where a run's TensorBoard events go: beside its JSONL log, named after it."""
    return log_path.with_suffix("")


@contextlib.contextmanager
def compiling(console: Console) -> Iterator[None]:
    """A spinner on a terminal; elsewhere a line before compiling and one with its time."""
    if console.is_terminal:
        with console.status("compiling"):
            yield
        return
    started = time.monotonic()
    console.print("compiling the training and evaluation steps", highlight=False)
    yield
    console.print(f"compiled in {time.monotonic() - started:.1f} s", highlight=False)


class Reporter:
    """Progress and epoch lines on `console`; JSONL records in `log_path`; TensorBoard events.

    Use as a context manager around the epochs; `append` continues an existing log (resume).
    Without a `log_path` (a process other than the primary of a multi-process run), records go
    nowhere. `tensorboard` writes event files in `tensorboard_dir(log_path)`.
    """

    def __init__(
        self,
        console: Console,
        log_path: Path | None,
        *,
        epochs: int,
        start_epoch: int,
        steps_per_epoch: int,
        append: bool,
        tensorboard: bool,
    ):
        self.console = console
        self.log_path = log_path
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.append = append
        self._log: IO[str] | None = None
        self._tensorboard = tensorboard and log_path is not None
        self._events: SummaryWriter | None = None
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._epoch_task: Any = None
        self._run_task = self._progress.add_task(
            "run", total=(epochs - start_epoch) * steps_per_epoch, metrics="", visible=False
        )
        self._start_epoch = self._epoch = start_epoch
        self._started = time.monotonic()

    def __enter__(self) -> Reporter:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path or os.devnull, "a" if self.append else "w")
        if self._tensorboard:
            self._events = _summary_writer(tensorboard_dir(self.log_path))
        if self.console.is_terminal:
            self._progress.update(self._run_task, visible=True)
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()
        if error is not None:  # Divergence, Ctrl-C, ...: the log says why it ends here.
            self.write("stopped", reason=type(error).__name__, message=str(error))
        self._log.close()
        if self._events is not None:
            self._events.close()

    def write(self, event: str, **record: Any) -> None:
        """Appends one JSONL record (flushed: a killed run keeps what it logged)."""
        assert self._log is not None, "Reporter used outside its `with` block"
        self._log.write(json.dumps({"event": event, "time": time.time(), **record}) + "\n")
        self._log.flush()

    def start_epoch(self, epoch: int) -> None:
        """Shows a fresh bar for `epoch` (0-based)."""
        self._epoch = epoch
        if self._epoch_task is not None:
            self._progress.remove_task(self._epoch_task)
        self._epoch_task = self._progress.add_task(
            f"epoch {epoch + 1}/{self.epochs}", total=self.steps_per_epoch, metrics=""
        )

    def update(self, steps_done: int, metrics: dict[str, float], images_per_second: float) -> None:
        """`steps_done` of the epoch are trained; shows the running training metrics."""
        shown = format_metrics(metrics, {"train_loss": "train_loss", "train_accuracy": "acc"})
        shown = f"{shown}  {images_per_second:,.0f} img/s"
        run_steps = (self._epoch - self._start_epoch) * self.steps_per_epoch + steps_done
        self._progress.update(self._epoch_task, completed=steps_done, metrics=shown)
        self._progress.update(self._run_task, completed=run_steps)
        if not self.console.is_terminal:
            self.console.print(
                f"epoch {self._epoch + 1}/{self.epochs} {steps_done / self.steps_per_epoch:4.0%} "
                f"({steps_done}/{self.steps_per_epoch} steps)  {shown}  {self._eta(run_steps)}",
                highlight=False,
                soft_wrap=True,
            )

    def _eta(self, run_steps: int) -> str:
        total = self._progress.tasks[self._run_task].total
        elapsed = time.monotonic() - self._started
        left = elapsed / run_steps * (total - run_steps)
        return f"run {run_steps / total:.0%}, ETA {left // 60:.0f}:{left % 60:02.0f}"

    def end_epoch(self, record: dict[str, Any], *, registry_step: int) -> None:
        """Prints the epoch's line above the bar, logs it, and adds its TensorBoard scalars."""
        smoothing = record.get("train_loss_label_smoothing")
        metrics = format_metrics(
            record,
            {
                # The training loss is what the step minimises, the held-out one plain.
                "train_loss": f"train_loss (labels smoothed {smoothing:g})"
                if smoothing
                else "train_loss",
                "train_accuracy": "train_acc",
                "train_top5_accuracy": "train_top5",
                "val_loss": "val_loss",
                "val_accuracy": "val_acc",
                "val_top5_accuracy": "val_top5",
            },
        )
        waiting = record.get("data_wait_fraction", 0.0)
        waiting = f" ({waiting:.0%} waiting for data)" if waiting >= 0.01 else ""
        self.console.print(
            f"epoch {record['epoch']}/{self.epochs}  {metrics}  "
            f"{record['images_per_second']:,.0f} img/s  {record['epoch_seconds']:.1f} s{waiting}",
            highlight=False,
            soft_wrap=True,
        )
        self.write("epoch", **record)
        if self._events is not None:
            for key in TENSORBOARD_SCALARS:
                if key in record:
                    self._events.add_scalar(TENSORBOARD_SCALARS[key], record[key], registry_step)
            self._events.flush()


# JSONL key -> TensorBoard tag; the "train/" and "val/" prefixes group the panels.
TENSORBOARD_SCALARS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "train_top5_accuracy": "train/top5_accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "val_top5_accuracy": "val/top5_accuracy",
    "lr": "lr",
    "images_per_second": "images_per_second",
    "data_wait_fraction": "data_wait_fraction",
}

"""What a run shows and records: a rich progress bar, one line per epoch, a JSONL metrics log.

The log has one JSON object per line, each with an "event": "start" (config, devices, compile
time), "epoch" (train and held-out metrics, learning rate, images/s, checkpoint step; the
training loss is the cross-entropy the step minimises, with labels smoothed by
"train_loss_label_smoothing", the held-out loss the plain one) and
"stopped" (a run ended by an exception: divergence, Ctrl-C). A resumed run appends to the same
file, so it reads as one history.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


def host_metrics(totals: dict[str, Any], prefix: str) -> dict[str, float]:
    """Sums fetched from the device -> {prefix_loss[, prefix_accuracy]} means."""
    count = float(totals["count"])
    metrics = {f"{prefix}_loss": float(totals["loss_sum"]) / count}
    if "correct" in totals:  # A classifier's; an autoencoder has a loss only.
        metrics[f"{prefix}_accuracy"] = float(totals["correct"]) / count
    return metrics


def format_metrics(metrics: dict[str, float], labels: dict[str, str], sep: str = "  ") -> str:
    """`label value` for each key of `labels` that `metrics` has; accuracies as percentages."""
    return sep.join(
        f"{label} {metrics[key]:.2%}" if key.endswith("accuracy") else f"{label} {metrics[key]:.4f}"
        for key, label in labels.items()
        if key in metrics
    )


class Reporter:
    """Progress bar and epoch lines on `console`; JSONL records in `log_path`.

    Use as a context manager around the epochs; `append` continues an existing log (resume).
    Without a `log_path` (a process other than the primary of a multi-process run), records go
    nowhere.
    """

    def __init__(
        self,
        console: Console,
        log_path: Path | None,
        *,
        epochs: int,
        steps_per_epoch: int,
        append: bool,
    ):
        self.console = console
        self.log_path = log_path
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.append = append
        self._log: IO[str] | None = None
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("train_loss {task.fields[loss]:.4f}{task.fields[accuracy]}"),
            TextColumn("{task.fields[images_per_second]:,.0f} img/s"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def __enter__(self) -> Reporter:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path or os.devnull, "a" if self.append else "w")
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

    def write(self, event: str, **record: Any) -> None:
        """Appends one JSONL record (flushed: a killed run keeps what it logged)."""
        assert self._log is not None, "Reporter used outside its `with` block"
        self._log.write(json.dumps({"event": event, "time": time.time(), **record}) + "\n")
        self._log.flush()

    def start_epoch(self, epoch: int) -> None:
        """Shows a fresh bar for `epoch` (0-based)."""
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            "train",
            total=self.steps_per_epoch,
            epoch=epoch + 1,
            epochs=self.epochs,
            loss=float("nan"),
            accuracy="",
            images_per_second=0.0,
        )

    def update(self, steps_done: int, metrics: dict[str, float], images_per_second: float) -> None:
        accuracy = metrics.get("train_accuracy")
        self._progress.update(
            self._task,
            completed=steps_done,
            loss=metrics["train_loss"],
            accuracy="" if accuracy is None else f"  acc {accuracy:6.2%}",
            images_per_second=images_per_second,
        )

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Prints the epoch's line above the bar and logs it."""
        smoothing = record.get("train_loss_label_smoothing")
        metrics = format_metrics(
            record,
            {
                # The training loss is what the step minimises, the held-out one plain.
                "train_loss": f"train_loss (labels smoothed {smoothing:g})"
                if smoothing
                else "train_loss",
                "train_accuracy": "train_acc",
                "val_loss": "val_loss",
                "val_accuracy": "val_acc",
            },
        )
        self.console.print(
            f"epoch {record['epoch']}/{self.epochs}  {metrics}  "
            f"{record['images_per_second']:,.0f} img/s  {record['epoch_seconds']:.1f} s",
            highlight=False,
            soft_wrap=True,
        )
        self.write("epoch", **record)

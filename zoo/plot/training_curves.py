"""`curves`: training and held-out loss (and accuracy) per epoch of a saved run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator, PercentFormatter

from zoo.errors import InvalidValueError, NotFoundError
from zoo.hub import CheckpointNotFoundError, read_metadata, step_folder
from zoo.plot.figure import checkpoint_picture, new_figure, output_path, save_figure

PANEL_WIDTH = 5.5
HEIGHT = 4.25
# One panel each; a reconstruction run records no accuracy.
METRICS = ("loss", "accuracy")
SPLITS = (("train", "training", "tab:blue"), ("val", "held-out", "tab:orange"))


def curves(
    name: str,
    *,
    log: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    registry: str | os.PathLike | None = None,
) -> Path:
    """Plots loss and accuracy per epoch of run `name`; returns the PNG's path.

    The epochs come from `log` (a `zoo train` JSONL metrics file) when given, else from the
    history saved with checkpoint `name` (its latest step, or `step`). Reconstruction runs, which
    log no accuracy, get the loss panel only. Writes `out`, else
    plots/<registry folder>/<name>-step_<N>-curves.png for a checkpoint's history and
    plots/<name>-curves.png for a log.
    """
    if log is not None:
        path = output_path(out, f"{name}-curves.png", registry=registry)
        history, source = read_log(log), f"log {log}"
    else:
        folder = saved_step(name, step, registry)
        path = output_path(out, checkpoint_picture(folder, "curves"), registry=registry)
        history, source = saved_history(folder, registry), f"the history saved in {folder.name}"
    metrics = [metric for metric in METRICS if _has(history, f"val_{metric}")]
    if not metrics:
        raise InvalidValueError(f"{source}: the epoch records hold no val_loss to plot")

    figure = new_figure(PANEL_WIDTH * len(metrics), HEIGHT)
    figure.suptitle(f"{name}\n{len(history)} epochs, from {source}")
    for axes, metric in zip(
        figure.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True
    ):
        _draw_panel(axes, history, metric)
    return save_figure(figure, path)


def saved_step(name: str, step: int | None, registry: str | os.PathLike | None) -> Path:
    """The folder of checkpoint `name`'s latest step, or of `step`, in the registries' lookup
    order."""
    try:
        return step_folder(name, step=step, registry=registry)
    except CheckpointNotFoundError as error:
        raise CheckpointNotFoundError(
            f"{error.args[0]} (see `zoo checkpoints`); to plot a run's JSONL log instead, "
            "pass --log FILE"
        ) from None


def saved_history(step_folder: Path, registry: str | os.PathLike | None) -> list[dict[str, Any]]:
    """The epoch records saved with a step, from its metadata file only (no weights restored)."""
    name, step = step_folder.parent.name, int(step_folder.name.removeprefix("step_"))
    history = read_metadata(name, step=step, registry=registry).get("history")
    if not history:
        name = step_folder.parent.name
        raise InvalidValueError(
            f"{name} {step_folder.name} has no meta['history'] (saved before runs recorded it); "
            f"pass its metrics log, e.g. --log runs/{name}.jsonl"
        )
    return history


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The "epoch" records of a `zoo train` JSONL log, one per epoch, in epoch order.

    A resumed run appends to its log and may repeat epochs it redoes after the checkpoint it
    resumed from; the later record of an epoch is the one that counts.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidValueError(f"{path}: a folder, not a `zoo train` JSONL metrics log")
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file (expected a `zoo train` JSONL metrics log)")
    by_epoch: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if isinstance(record, dict) and record.get("event") == "epoch":
                if not isinstance(record.get("epoch"), int):
                    raise InvalidValueError(f"{path}:{number}: an epoch record without its number")
                by_epoch[record["epoch"]] = record
    if not by_epoch:
        raise InvalidValueError(f"{path} has no epoch records (is it a `zoo train` metrics log?)")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _draw_panel(axes, history: list[dict[str, Any]], metric: str) -> None:
    """One metric's training and held-out curves, with the best held-out epoch marked."""
    epochs = [record["epoch"] for record in history]
    for split, label, colour in SPLITS:
        key = f"{split}_{metric}"
        if _has(history, key):
            axes.plot(
                epochs, [r[key] for r in history], "o-", color=colour, markersize=3, label=label
            )
    values = [record[f"val_{metric}"] for record in history]
    best = (max if metric == "accuracy" else min)(range(len(values)), key=values.__getitem__)
    text = f"{values[best]:.2%}" if metric == "accuracy" else f"{values[best]:.4g}"
    axes.plot(
        epochs[best],
        values[best],
        "*",
        color="tab:red",
        markersize=12,
        zorder=3,
        label=f"best held-out: {text} (epoch {epochs[best]})",
    )
    if metric == "accuracy":
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    axes.grid(alpha=0.3)
    axes.legend()


def _has(history: list[dict[str, Any]], key: str) -> bool:
    return all(key in record for record in history)

"""When a run has diverged, and how it says so: judged on every epoch before anything is saved.

A loss can explode and stay finite (a learning rate far too high gives a held-out loss of 1e32 and
chance accuracy), so finiteness alone does not tell a good epoch from a diverged one. An epoch
has diverged when any of these holds:

- a loss is NaN or infinite (also checked during the epoch, whenever the progress bar updates);
- the held-out loss exceeds `LOSS_FACTOR` times a reference: the run's best held-out loss so
  far, and for a classifier at least ln(classes), what a uniform guess scores, so an epoch is
  judged even when it is the run's first, and a run whose best loss is tiny is not stopped by
  a small rise;
- a classifier's held-out accuracy has fallen to about chance (at most `CHANCE_FACTOR` / classes)
  after the run had been well above it (at least `LEARNED_FACTOR` / classes).

The thresholds are loose on purpose: a healthy run, overfitting included, never comes near them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from zoo.errors import ZooError

LOSS_FACTOR = 10.0
CHANCE_FACTOR = 1.5
LEARNED_FACTOR = 3.0


class TrainingDiverged(ZooError, FloatingPointError):
    """Training diverged; the epoch was not saved, and the registry keeps what it had."""


def non_finite_losses(metrics: Mapping[str, float]) -> str | None:
    """'train_loss = nan, ...' for each non-finite loss in `metrics`, or None."""
    bad = [f"{k} = {v}" for k, v in metrics.items() if k.endswith("_loss") and not math.isfinite(v)]
    return ", ".join(bad) or None


def divergence(
    metrics: Mapping[str, float],
    earlier: Iterable[Mapping[str, Any]],
    num_classes: int | None,
) -> str | None:
    """Why the epoch with held-out `metrics` has diverged, or None if it has not.

    `earlier` are the run's previous epoch records (with "val_loss", "val_accuracy");
    `num_classes` is None for a model that is not a classifier.
    """
    if (bad := non_finite_losses(metrics)) is not None:
        return bad
    earlier = list(earlier)
    best_loss = min((record["val_loss"] for record in earlier), default=None)
    uniform_loss = math.log(num_classes) if num_classes else None
    references = [loss for loss in (best_loss, uniform_loss) if loss is not None]
    if references and metrics["val_loss"] > LOSS_FACTOR * max(references):
        what = (
            "the run's best held-out loss"
            if uniform_loss is None or (best_loss is not None and best_loss > uniform_loss)
            else "a uniform guess's loss ln(classes)"
        )
        reference = max(references)
        return (
            f"val_loss = {metrics['val_loss']:.4g}, over {LOSS_FACTOR:g}x {what} ({reference:.4g})"
        )
    if num_classes and "val_accuracy" in metrics:
        best = max((record["val_accuracy"] for record in earlier), default=0.0)
        chance = 1 / num_classes
        if best >= LEARNED_FACTOR * chance and metrics["val_accuracy"] <= CHANCE_FACTOR * chance:
            return (
                f"val_accuracy = {metrics['val_accuracy']:.2%}, down to about chance "
                f"({chance:.2%}) from the run's best {best:.2%}"
            )
    return None

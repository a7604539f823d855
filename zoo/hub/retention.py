"""Which steps a save keeps: the latest `max_to_keep` by step number, plus the best by a metric."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from zoo.errors import InvalidValueError

MODES = ("max", "min")


def check_policy(
    max_to_keep: int | None, best: tuple[str, str] | None, metrics: Mapping[str, Any]
) -> None:
    """Raises `ValueError` for a bad policy, or when `best` names a metric this save lacks."""
    if max_to_keep is not None and (
        isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
    ):
        raise InvalidValueError(
            f"max_to_keep must be a positive int or None (keep all), got {max_to_keep!r}"
        )
    if best is None:
        return
    if not (isinstance(best, tuple | list) and len(best) == 2 and best[1] in MODES):
        raise InvalidValueError(f"best must be (metric name, 'max' or 'min'), got {best!r}")
    value = metrics.get(best[0])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(
            f"best={tuple(best)!r} needs a number at meta['metrics'][{best[0]!r}], "
            f"got {value!r} (metrics: {sorted(metrics)})"
        )


def steps_to_retire(
    steps: Sequence[int],
    *,
    max_to_keep: int | None,
    best: tuple[str, str] | None,
    metric_values: Mapping[int, float],
    just_saved: int,
) -> list[int]:
    """The steps to delete, ascending.

    Kept: the `max_to_keep` highest steps, the step with the best `metric_values` entry (the
    later one on a tie), and `just_saved` (a save never deletes what it just wrote, even below
    older higher steps).
    """
    if max_to_keep is None:
        return []
    keep = {*sorted(steps)[-max_to_keep:], just_saved}
    if best is not None and metric_values:
        sign = 1 if best[1] == "max" else -1
        keep.add(max(metric_values, key=lambda step: (sign * metric_values[step], step)))
    return sorted(set(steps) - keep)


def competes_for_best(value: Any) -> bool:
    """A recorded metric value that can be ranked: a number, not NaN (a diverged run's)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)

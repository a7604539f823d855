"""The divergence rules on epoch records, one rule at a time."""

from __future__ import annotations

import math

from zoo.training.divergence import divergence

GOOD = [{"val_loss": 0.3, "val_accuracy": 0.90}, {"val_loss": 0.1, "val_accuracy": 0.97}]


def test_a_healthy_or_overfitting_epoch_has_not_diverged():
    assert divergence({"val_loss": 0.08, "val_accuracy": 0.975}, GOOD, 10) is None
    assert divergence({"val_loss": 0.6, "val_accuracy": 0.93}, GOOD, 10) is None  # Overfitting.
    assert divergence({"val_loss": 2.3, "val_accuracy": 0.11}, [], 10) is None  # Just started.


def test_a_non_finite_loss_has_diverged():
    assert divergence({"val_loss": math.nan, "val_accuracy": 0.9}, GOOD, 10) == "val_loss = nan"
    assert "train_loss = inf" in divergence({"train_loss": math.inf, "val_loss": 0.1}, GOOD, 10)


def test_a_finite_loss_far_above_the_reference_has_diverged():
    # A classifier's bar is at least 10 x ln(10), even in the run's first epoch.
    assert "uniform guess" in divergence({"val_loss": 1e32, "val_accuracy": 0.9}, [], 10)
    assert divergence({"val_loss": 20.0, "val_accuracy": 0.9}, GOOD, 10) is None
    # A reconstruction model's bar is its own best loss.
    assert "run's best" in divergence({"val_loss": 1.1}, [{"val_loss": 0.1}], None)
    assert divergence({"val_loss": 0.9}, [{"val_loss": 0.1}], None) is None
    assert divergence({"val_loss": 1e9}, [], None) is None  # No reference yet.


def test_accuracy_collapsing_to_chance_after_learning_has_diverged():
    assert "about chance" in divergence({"val_loss": 2.3, "val_accuracy": 0.12}, GOOD, 10)
    assert divergence({"val_loss": 2.3, "val_accuracy": 0.16}, GOOD, 10) is None
    # Never well above chance: nothing collapsed.
    assert (
        divergence(
            {"val_loss": 2.3, "val_accuracy": 0.1}, [{"val_loss": 2.2, "val_accuracy": 0.25}], 10
        )
        is None
    )

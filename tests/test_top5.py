"""Top-5 accuracy beyond 10 classes: counted on the device, in the logs, TensorBoard, `zoo eval`."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rich.console import Console
from tensorboard.backend.event_processing import event_accumulator

from zoo import hub
from zoo.cli import main
from zoo.data import make_synthetic
from zoo.training.config import TrainConfig
from zoo.training.loop import fit
from zoo.training.report import tensorboard_dir
from zoo.training.step import TOP5_MIN_CLASSES, in_top_k, metric_sums, zero_metrics


def reference_top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the k largest logits, by sorting (no ties in random floats)."""
    return np.array(
        [label in np.argsort(-row)[:k] for row, label in zip(logits, labels, strict=True)]
    )


def test_top5_hits_and_their_weighted_sum_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((256, 20)).astype(np.float32)
    labels = rng.integers(0, 20, 256).astype(np.int32)
    weight = (rng.random(256) < 0.8).astype(np.float32)  # Padding rows count 0.
    np.testing.assert_array_equal(in_top_k(logits, labels, 5), reference_top_k(logits, labels, 5))
    np.testing.assert_array_equal(in_top_k(logits, labels, 1), logits.argmax(-1) == labels)
    sums = jax.jit(metric_sums, static_argnames="task")(
        logits, {"label": labels}, jnp.zeros(256), weight, task="classification"
    )
    hits = reference_top_k(logits, labels, 5)
    assert float(sums["correct_top5"]) == pytest.approx(float((hits * weight).sum()))
    assert float(sums["correct"]) == pytest.approx(
        float(((logits.argmax(-1) == labels) * weight).sum())
    )
    assert 0.2 < hits.mean() < 0.3  # About 5/20 for random logits: a test that can fail.


def test_a_tie_with_the_label_counts_for_it_so_top5_is_never_below_top1():
    logits = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert bool(in_top_k(logits, jnp.array([1]), 1))
    logits = jnp.concatenate([jnp.full((1, 6), 2.0), jnp.zeros((1, 5))], axis=1)
    assert not bool(in_top_k(logits, jnp.array([7]), 5))  # Six logits above it.


@pytest.mark.parametrize("classes", [TOP5_MIN_CLASSES - 1, TOP5_MIN_CLASSES])
def test_top5_is_counted_from_more_than_10_classes_and_the_zeros_have_the_same_keys(classes):
    logits = jnp.zeros((4, classes))
    sums = metric_sums(
        logits, {"label": jnp.zeros(4, jnp.int32)}, jnp.zeros(4), jnp.ones(4), "classification"
    )
    assert set(sums) == set(zero_metrics("classification", classes))
    assert ("correct_top5" in sums) == (classes > 10)
    assert set(zero_metrics("reconstruction", classes)) == {"loss_sum", "count"}


def test_a_12_class_run_logs_top5_and_zoo_eval_reports_it(tmp_path, capsys):
    config = TrainConfig(
        model="mlp",
        dataset="synthetic",
        epochs=1,
        batch_size=32,
        max_train_examples=128,
        model_args={"num_classes": 12},
        registry=str(tmp_path / "registry"),
        log=str(tmp_path / "log.jsonl"),
    )
    fit(config, console=Console(quiet=True))
    record = json.loads(Path(config.log).read_text().splitlines()[-1])
    assert 0 <= record["train_top5_accuracy"] <= 1
    assert record["val_accuracy"] <= record["val_top5_accuracy"] <= 1

    # The logged top-5 is the saved model's on the held-out split, computed here on the host.
    loaded = hub.load(config.run_name, registry=config.registry)
    test = make_synthetic((28, 28, 1), 12).test
    logits = np.asarray(loaded.logits(test.images))
    expected = reference_top_k(logits, test.labels, 5).mean()
    assert record["val_top5_accuracy"] == pytest.approx(expected, abs=1e-6)

    events = event_accumulator.EventAccumulator(str(tensorboard_dir(Path(config.log))))
    events.Reload()
    assert {"train/top5_accuracy", "val/top5_accuracy"} <= set(events.Tags()["scalars"])
    assert events.Scalars("val/top5_accuracy")[0].value == pytest.approx(expected, abs=1e-6)

    assert main(["eval", config.run_name, "--registry", config.registry]) == 0
    assert capsys.readouterr().out == (
        f"{config.run_name} step 4 on synthetic held-out split (512 images, 12 classes: 0, 1, "
        f"2, ...): top-1 {record['val_accuracy']:.2%}, top-5 {expected:.2%}, loss "
        f"{record['val_loss']:.4f}\n"
    )

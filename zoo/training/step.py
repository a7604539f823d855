"""One optimisation step and one evaluation step: pure functions of (state, batch).

No I/O, no logging, no config: the loop jits them once (with the state donated) and everything
they need is in the state or the batch. A batch holds model-ready inputs
(`zoo.training.pipeline` has already gathered, augmented and standardised them). Metrics come
back as on-device sums (loss times examples, correct predictions, examples), so adding them over
an epoch gives exact per-example means at whatever point the loop chooses to fetch them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.training.state import TrainState

# "image": (B, H, W, C) float; "label": (B,) int; eval: "weight" (B,); mixed: "target" (B, K)
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]  # "loss_sum", "count" and, for classifiers, "correct"

TASKS = ("classification", "reconstruction")


def zero_metrics(task: str = "classification") -> Metrics:
    """The empty sums that an epoch's or an evaluation's metrics are added onto."""
    names = ("loss_sum", "correct", "count") if task == "classification" else ("loss_sum", "count")
    return {name: jnp.float32(0) for name in names}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, computed in float32 whatever the compute dtype."""
    return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)


def soft_cross_entropy(
    logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Cross-entropy against target distributions (B, K): one-hot, or mixed by mixup/cutmix."""
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def per_example_loss(
    outputs: jax.Array, batch: Batch, task: str, label_smoothing: float = 0.0
) -> jax.Array:
    """Cross-entropy for a classifier (against the batch's mixed "target" when it has one); for
    an autoencoder the mean squared error between its reconstruction and its own (standardised)
    input, the lecture's self-supervised signal."""
    if task == "reconstruction":
        error = outputs.astype(jnp.float32) - batch["image"].astype(jnp.float32)
        return jnp.mean(jnp.square(error), axis=tuple(range(1, error.ndim)))
    if "target" in batch:
        return soft_cross_entropy(outputs, batch["target"], label_smoothing)
    return cross_entropy(outputs, batch["label"], label_smoothing)


def metric_sums(
    outputs: jax.Array, batch: Batch, losses: jax.Array, weight: jax.Array, task: str
) -> Metrics:
    """Weighted sums of the loss (and, for a classifier, of correct predictions).

    Under mixup/cutmix a batch's "label" is each example's dominant label (the larger share of
    its target), so train accuracy counts predictions of that label.
    """
    sums = {"loss_sum": jnp.sum(losses * weight), "count": jnp.sum(weight)}
    if task == "classification":
        sums["correct"] = jnp.sum((outputs.argmax(-1) == batch["label"]) * weight)
    return sums


def train_step(
    state: TrainState, batch: Batch, *, task: str = "classification", label_smoothing: float = 0.0
) -> tuple[TrainState, Metrics]:
    """A gradient step on `batch`; BatchNorm uses and updates batch statistics.

    With gradient accumulation the optimizer (`optax.MultiSteps`) only applies an update every
    `grad_accum_steps` calls; the statistics and the weight average move every call.
    """
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
        outputs, updates = state.apply_fn(
            {**state.variables, "params": params},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        losses = per_example_loss(outputs, batch, task, label_smoothing)
        return losses.mean(), (outputs, losses, updates)

    (_, (outputs, losses, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    state = state.with_batch_stats(updates.get("batch_stats", state.batch_stats))
    state = state.advance_average()
    return state, metric_sums(outputs, batch, losses, jnp.ones_like(losses), task)


def eval_step(
    variables: dict[str, Any], batch: Batch, *, apply_fn: Any, task: str = "classification"
) -> Metrics:
    """Loss (and accuracy) sums over the examples of `batch` whose "weight" is 1 (not padding).

    BatchNorm uses its running averages and dropout is off (`train=False`). Loss is the plain
    cross-entropy (no label smoothing), comparable across runs.
    """
    outputs = apply_fn(variables, batch["image"], train=False)
    return metric_sums(
        outputs, batch, per_example_loss(outputs, batch, task), batch["weight"], task
    )

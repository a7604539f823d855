"""One optimisation step and one evaluation step: pure functions of (state, batch).

No I/O, no logging, no config: the loop jits them once (with the state donated) and everything
they need is in the state or the batch. A batch holds model-ready inputs
(`zoo.training.pipeline` has already gathered, augmented and standardised them). Metrics come
back as on-device sums (loss times examples, correct predictions, examples), so adding them over
an epoch gives exact per-example means at whatever point the loop chooses to fetch them. A
classifier of more than `TOP5_MIN_CLASSES - 1` classes also counts top-5 hits, as ImageNet's
results are reported.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from zoo.training.state import TrainState

# "image": (B, H, W, C) float; "label": (B,) int; eval: "weight" (B,); mixed: "target" (B, K)
Batch = dict[str, jax.Array]
# "loss_sum", "count" and, for classifiers, "correct" (top-1) and, from `TOP5_MIN_CLASSES`
# classes, "correct_top5"; per-class sums (K,) "class_correct", "class_count" where asked for.
Metrics = dict[str, jax.Array]

TASKS = ("classification", "reconstruction")
# Top-5 accuracy is reported for more than 10 classes: with 10 or fewer it says little.
TOP5_MIN_CLASSES = 11


def zero_metrics(task: str = "classification", num_classes: int = 0) -> Metrics:
    """The empty sums that an epoch's metrics are added onto: the keys `train_step` returns for
    a `num_classes`-way classifier (or a reconstruction model)."""
    names = ["loss_sum", "count"]
    if task == "classification":
        names.append("correct")
        if num_classes >= TOP5_MIN_CLASSES:
            names.append("correct_top5")
    return {name: jnp.float32(0) for name in names}


def in_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Whether each label is among the `k` highest logits: fewer than `k` logits exceed its own.

    No sort (one comparison per class). A tie with the label's logit counts for the label, so a
    top-1 hit by argmax is always a top-k hit.
    """
    own = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return jnp.sum(logits > own, axis=-1) < k


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
    outputs: jax.Array,
    batch: Batch,
    losses: jax.Array,
    weight: jax.Array,
    task: str,
    *,
    per_class: bool = False,
) -> Metrics:
    """Weighted sums of the loss (and, for a classifier, of correct predictions: top-1, and
    top-5 from `TOP5_MIN_CLASSES` classes; with `per_class`, also per label).

    Under mixup/cutmix a batch's "label" is each example's dominant label (the larger share of
    its target), so train accuracy counts predictions of that label.
    """
    sums = {"loss_sum": jnp.sum(losses * weight), "count": jnp.sum(weight)}
    if task != "classification":
        return sums
    labels, num_classes = batch["label"], outputs.shape[-1]
    correct = (outputs.argmax(-1) == labels) * weight
    sums["correct"] = jnp.sum(correct)
    if num_classes >= TOP5_MIN_CLASSES:
        sums["correct_top5"] = jnp.sum(in_top_k(outputs, labels, 5) * weight)
    if per_class:
        one_hot = jax.nn.one_hot(labels, num_classes)  # Sums, not a matmul: exact anywhere.
        sums["class_correct"] = jnp.sum(one_hot * correct[:, None], axis=0)
        sums["class_count"] = jnp.sum(one_hot * weight[:, None], axis=0)
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
    variables: dict[str, Any],
    batch: Batch,
    *,
    apply_fn: Any,
    task: str = "classification",
    per_class: bool = False,
) -> Metrics:
    """Loss (and accuracy) sums over the examples of `batch` whose "weight" is 1 (not padding).

    BatchNorm uses its running averages and dropout is off (`train=False`). Loss is the plain
    cross-entropy (no label smoothing), comparable across runs. `per_class` adds each label's
    sums (`metric_sums`).
    """
    outputs = apply_fn(variables, batch["image"], train=False)
    return metric_sums(
        outputs,
        batch,
        per_example_loss(outputs, batch, task),
        batch["weight"],
        task,
        per_class=per_class,
    )

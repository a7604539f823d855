"""One optimisation step and one evaluation step: pure functions of (state, batch).

No I/O, no logging, no config: the loop jits them once (with the state donated) and everything
they need is in the state or the batch. A batch holds model-ready inputs (`train.pipeline` has
already gathered, augmented and standardised them). Metrics come back as on-device sums (loss
times examples, correct predictions, examples), so adding them over an epoch gives exact
per-example means at whatever point the loop chooses to fetch them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState

Batch = dict[str, jax.Array]  # "image": (B, H, W, C) float; "label": (B,) int; eval: "weight"
Metrics = dict[str, jax.Array]  # "loss_sum", "correct", "count": float32 scalars


def zero_metrics() -> Metrics:
    """The empty sums that an epoch's or an evaluation's metrics are added onto."""
    return {"loss_sum": jnp.float32(0), "correct": jnp.float32(0), "count": jnp.float32(0)}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Per-example softmax cross-entropy, computed in float32 whatever the compute dtype."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: Batch, *, label_smoothing: float = 0.0
               ) -> tuple[TrainState, Metrics]:
    """A gradient step on `batch`; BatchNorm uses and updates batch statistics."""
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        logits, updates = state.apply_fn(
            {**state.variables, "params": params}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_key})
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    count = jnp.float32(batch["label"].shape[0])
    return state, {
        "loss_sum": loss * count,
        "correct": jnp.sum(logits.argmax(-1) == batch["label"]).astype(jnp.float32),
        "count": count,
    }


def eval_step(variables: dict[str, Any], batch: Batch, *, apply_fn: Any) -> Metrics:
    """Loss and accuracy sums over the examples of `batch` whose "weight" is 1 (not padding).

    BatchNorm uses its running averages and dropout is off (`train=False`). Loss is the plain
    cross-entropy (no label smoothing), comparable across runs.
    """
    logits = apply_fn(variables, batch["image"], train=False)
    weight = batch["weight"]
    return {
        "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * weight),
        "correct": jnp.sum((logits.argmax(-1) == batch["label"]) * weight),
        "count": jnp.sum(weight),
    }

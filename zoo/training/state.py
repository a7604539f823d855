"""The training state pytree and the optimizer it carries, both built from a `TrainConfig`.

Everything that changes during training is a leaf of `TrainState` (step, params, batch_stats,
opt_state, the dropout key), so a jitted step is a pure function of it and a checkpoint of it
resumes training exactly. The model's `apply` and the optax transformation are static fields.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from zoo.training.config import TrainConfig

PyTree = Any


class TrainState(train_state.TrainState):
    """Flax's `TrainState` plus BatchNorm statistics and the base key of dropout.

    Attributes:
      batch_stats: the 'batch_stats' collection ({} for a model without BatchNorm).
      dropout_key: raw key data (uint32); each step folds in `step`, so the dropout mask is a
        function of the state alone, and a resumed run draws the masks it would have drawn.
    """

    batch_stats: PyTree
    dropout_key: jax.Array

    @property
    def variables(self) -> dict[str, PyTree]:
        """The model variables, as `model.apply` takes them."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def resumable(self) -> dict[str, PyTree]:
        """What a checkpoint needs besides the variables to continue training exactly."""
        return {"step": self.step, "opt_state": self.opt_state, "dropout_key": self.dropout_key}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, int, int],
    key: jax.Array,
) -> TrainState:
    """Initialises the model on a dummy batch of `input_shape` images and the optimizer."""
    init_key, dropout_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
        dropout_key=jax.random.key_data(dropout_key),
    )


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 to `config.lr` over `warmup_epochs`, then cosine decay to 0."""
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=warmup_steps,
        # optax wants a cosine part of at least one step; when warm-up spans the whole run,
        # that step lies past the last one trained, so the run is all warm-up, as asked.
        decay_steps=max(config.epochs * steps_per_epoch, warmup_steps + 1),
        end_value=0.0,
    )


def decay_mask(params: PyTree) -> PyTree:
    """True for weight matrices and kernels; biases and norm scales/offsets (1-D) get no decay."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD (momentum, optionally Nesterov) or AdamW on the warm-up + cosine schedule."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    # Decay is added to the gradient before momentum, as in PyTorch's SGD.
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
    )

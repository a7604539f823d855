"""The training state pytree and the optimizer it carries, both built from a `TrainConfig`.

Everything that changes during training is a leaf of `TrainState` (step, params, batch_stats,
opt_state, the dropout key, the weight average), so a jitted step is a pure function of it and
a checkpoint of it resumes training exactly. The model's `apply`, the optax transformation, the
average's decay and the frozen paths are static fields.

`TrainState.step` counts batches (micro-steps); with `grad_accum_steps` N, optax's `MultiSteps`
applies an update every N of them, and the learning-rate schedule counts those updates.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from zoo.errors import InvalidValueError
from zoo.training.config import TrainConfig

PyTree = Any

# `--schedule step`: the CIFAR schedule of He et al. 2015 (Sec. 4.2: lr / 10 at 32k and 48k of
# 64k iterations), as fractions of the run's updates.
STEP_DECAY_AT = (0.5, 0.75)
STEP_DECAY_FACTOR = 0.1


class TrainState(train_state.TrainState):
    """Flax's `TrainState` plus BatchNorm statistics, the base key of dropout and the average.

    Attributes:
      batch_stats: the 'batch_stats' collection ({} for a model without BatchNorm).
      dropout_key: raw key data (uint32); each step folds in `step`, so the dropout mask is a
        function of the state alone, and a resumed run draws the masks it would have drawn.
      ema: the exponential moving average of `variables` (`ema_decay` > 0), else {}.
      ema_decay: the average's decay per step (0: no average is kept).
      frozen: '/'-joined paths ("params/conv1/kernel", "batch_stats/bn/mean") that never change:
        the optimizer gives them zero updates and the step keeps their old statistics.
    """

    batch_stats: PyTree
    dropout_key: jax.Array
    ema: PyTree = struct.field(default_factory=dict)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)
    frozen: frozenset[str] = struct.field(pytree_node=False, default=frozenset())

    @property
    def variables(self) -> dict[str, PyTree]:
        """The model variables, as `model.apply` takes them."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    @property
    def saved_variables(self) -> dict[str, PyTree]:
        """What a checkpoint serves as the model: the weight average when one is kept."""
        return self.ema or self.variables

    def resumable(self) -> dict[str, PyTree]:
        """What a checkpoint needs besides `saved_variables` to continue training exactly."""
        extra = {"variables": self.variables} if self.ema else {}
        return {
            "step": self.step,
            "opt_state": self.opt_state,
            "dropout_key": self.dropout_key,
            **extra,
        }

    def restored(self, saved_variables: PyTree, resumable: dict[str, PyTree]) -> TrainState:
        """This (fresh) state with a checkpoint's `saved_variables` and `resumable()` tree."""
        resumable = dict(resumable)
        variables = resumable.pop("variables", saved_variables)
        return self.replace(
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            ema=saved_variables if self.ema else {},
            **resumable,
        )

    def with_batch_stats(self, batch_stats: PyTree) -> TrainState:
        """The state with a step's new batch statistics, the frozen ones kept."""
        kept = keep_frozen(
            {"batch_stats": self.batch_stats}, {"batch_stats": batch_stats}, self.frozen
        )
        return self.replace(batch_stats=kept["batch_stats"])

    def with_average_reset(self) -> TrainState:
        """The state with its weight average set to its variables, in buffers of its own (a
        train step donates the state, and one buffer donated twice is an error)."""
        return self.replace(ema=jax.tree.map(jnp.copy, self.variables))

    def advance_average(self) -> TrainState:
        """The state with its weight average moved towards its variables (none: unchanged).

        The decay warms up as in `tf.train.ExponentialMovingAverage(num_updates=step)`,
        min(decay, (1 + t) / (10 + t)), so the initial weights fade out of short runs too.
        """
        if not self.ema:
            return self
        t = self.step.astype(jnp.float32)
        decay = jnp.minimum(self.ema_decay, (1 + t) / (10 + t))
        ema = jax.tree.map(lambda a, x: a + (1 - decay) * (x - a), self.ema, self.variables)
        return self.replace(ema=ema)


def keep_frozen(old: PyTree, new: PyTree, frozen: frozenset[str]) -> PyTree:
    """`new`, but `old` at the `frozen` paths."""
    if not frozen:
        return new
    return jax.tree_util.tree_map_with_path(
        lambda path, a, b: a if leaf_path(path) in frozen else b, old, new
    )


def leaf_path(path: tuple[Any, ...]) -> str:
    """A pytree key path as "params/conv1/kernel"."""
    return jax.tree_util.keystr(path, simple=True, separator="/")  # The store's naming too.


def frozen_paths(
    variables: PyTree, train_only: str | None, head_name: str | None = None
) -> frozenset[str]:
    """The paths of `variables` that `train_only`'s globs leave frozen (none without it).

    A glob matches a path without its collection ("conv1/kernel", "bn/mean"), so `bn/*` trains
    a BatchNorm's scale and bias and updates its statistics; anything it does not match keeps
    its value, the statistics included. The glob `head` is the model's classifier, whatever its
    module is called (`head_name`: `fc` in a ResNet, `output` in LeNet-5). A glob that matches
    nothing is an `InvalidValueError` listing what there is: it would train nothing.
    """
    if train_only is None:
        return frozenset()
    globs = [_head_glob(g.strip(), head_name) for g in train_only.split(",")]
    paths = [leaf_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    local = {full: full.split("/", 1)[1] for full in paths}
    for glob in globs:
        if not any(fnmatch.fnmatchcase(path, glob) for path in local.values()):
            raise InvalidValueError(
                f"train_only {glob!r} matches no parameter; {_parameter_groups(variables)}"
                + (f" (`head` is the classifier, {head_name}/*)" if head_name else "")
            )
    return frozenset(
        full for full, path in local.items() if not any(fnmatch.fnmatchcase(path, g) for g in globs)
    )


def check_train_only(model: nn.Module, train_only: str) -> None:
    """Raises as `frozen_paths` does for `model`'s variables, found by tracing its `init`."""
    shape = jax.ShapeDtypeStruct((1, *model.input_size, model.in_channels), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), shape)
    frozen_paths(variables, train_only, getattr(model, "head_name", None))


# The glob that names a model's classifier, whatever the model calls it.
HEAD_GLOB = "head"
# How many parameter groups an error lists before it points to `zoo summary` for the rest.
_LISTED_GROUPS = 24


def _head_glob(glob: str, head_name: str | None) -> str:
    return f"{head_name}/*" if glob == HEAD_GLOB and head_name is not None else glob


def _parameter_groups(variables: PyTree) -> str:
    """'the parameters are c1/*, c3/*, ...': the top-level modules of the `params`."""
    groups = [f"{name}/*" for name in variables.get("params", {})]
    if not groups:
        return "the model has no parameters"
    shown = ", ".join(groups[:_LISTED_GROUPS])
    more = len(groups) - _LISTED_GROUPS
    rest = f" and {more} more (`zoo summary MODEL` lists every layer)" if more > 0 else ""
    return f"the parameters are {shown}{rest}"


def freeze(
    tx: optax.GradientTransformation, frozen: frozenset[str]
) -> optax.GradientTransformation:
    """`tx` for the trainable parameters, zero updates (`optax.set_to_zero`) for `frozen`."""
    if not frozen:
        return tx

    def labels(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if "params/" + leaf_path(path) in frozen else "train", params
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, int, int],
    key: jax.Array,
    *,
    ema_decay: float = 0.0,
    train_only: str | None = None,
) -> TrainState:
    """Initialises the model on a dummy batch of `input_shape` images and the optimizer.

    With `ema_decay` the state keeps a weight average (starting at the initial weights); with
    `train_only` the parameters and statistics its globs do not match are frozen.
    """
    init_key, dropout_key = jax.random.split(key)
    variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    frozen = frozen_paths(variables, train_only, getattr(model, "head_name", None))
    tx = freeze(tx, frozen)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=variables.get("batch_stats", {}),
        dropout_key=jax.random.key_data(dropout_key),
        ema_decay=ema_decay,
        frozen=frozen,
    )
    return state.with_average_reset() if ema_decay else state


def updates_per_epoch(config: TrainConfig, steps_per_epoch: int) -> float:
    """Optimizer updates per epoch: one per `grad_accum_steps` batches."""
    return steps_per_epoch / config.grad_accum_steps


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate after n optimizer updates: linear warm-up from
    `config.lr * config.warmup_start_factor` (0 by default) to `config.lr` over `warmup_epochs`,
    then `config.schedule`'s decay (`onecycle` is its own warm-up and decay).

    `steps_per_epoch` counts batches; the schedule counts updates (`updates_per_epoch`).
    """
    per_epoch = updates_per_epoch(config, steps_per_epoch)
    total = max(1, int(config.epochs * per_epoch))
    warmup = round(config.warmup_epochs * per_epoch)
    start = config.lr * config.warmup_start_factor
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=total, peak_value=config.lr, pct_start=min(1.0, warmup / total)
        )
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=start,
            peak_value=config.lr,
            warmup_steps=warmup,
            # optax wants a cosine part of at least one step; when warm-up spans the whole run,
            # that step lies past the last one trained, so the run is all warm-up, as asked.
            decay_steps=max(total, warmup + 1),
            end_value=0.0,
        )
    if config.schedule == "linear":
        decay = optax.linear_schedule(config.lr, 0.0, max(1, total - warmup))
    else:  # "step"
        decay = optax.piecewise_constant_schedule(
            config.lr,
            {round(f * total) - warmup: STEP_DECAY_FACTOR for f in STEP_DECAY_AT},
        )
    ramp = optax.linear_schedule(start, config.lr, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def learning_rate_at_step(config: TrainConfig, steps_per_epoch: int) -> Callable[[Any], Any]:
    """The learning rate that train step (batch) `step` uses, for logging."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    return lambda step: schedule(step // config.grad_accum_steps)


# Leaves of more than one axis that are not the weights of a linear map: a ViT's class token
# (`ClassToken`) and position embeddings (`PositionEmbedding`), timm's `no_weight_decay()`.
NO_DECAY_LEAVES = frozenset({"token", "embedding"})


def decay_mask(params: PyTree) -> PyTree:
    """True where weight decay applies: the kernels of convolutions, dense layers and attention
    projections. Nothing 1-D decays (biases, the scales and offsets of batch and layer norms,
    layer scales), nor a ViT's class token and position embeddings (`NO_DECAY_LEAVES`): timm's
    rule (its 1-D test and `no_weight_decay()`), the one the ConvNeXt and DeiT recipes train
    with. torchvision's reference recipes decay biases and layer scales too, and ViT-B's its
    norms (bench/README.md has the recipes)."""

    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        name = getattr(path[-1], "key", None)
        return leaf.ndim > 1 and name not in NO_DECAY_LEAVES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD (momentum, optionally Nesterov) or AdamW on `config.schedule`, weight decay by
    `decay_mask`, the gradient's global norm clipped to `clip_grad_norm` first when it is set,
    and gradients averaged over `grad_accum_steps` batches (`optax.MultiSteps`) when that is
    above 1 (the average is what is clipped)."""
    if config.epochs * steps_per_epoch < config.grad_accum_steps:
        raise InvalidValueError(
            f"grad_accum_steps={config.grad_accum_steps} is more than the run's "
            f"{config.epochs * steps_per_epoch} batches: no update would ever be applied"
        )
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    else:
        # Decay is added to the gradient before momentum, as in PyTorch's SGD.
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
        )
    if config.clip_grad_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
    if config.grad_accum_steps > 1:
        return optax.MultiSteps(
            tx, every_k_schedule=config.grad_accum_steps
        ).gradient_transformation()
    return tx

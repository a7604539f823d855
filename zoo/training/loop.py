"""The training loop: epochs of one compiled step, held-out evaluation, checkpoints, NaN guard.

The step (gather, augment, preprocess, `train_step`, add metrics) is compiled once, ahead of
time, with the state and the metric sums donated. Metrics stay on the device: the loop fetches
their sums `REFRESHES_PER_EPOCH` times an epoch for the progress bar, never every step, and
each fetch checks the loss is finite. After every epoch the held-out split is evaluated and,
every `checkpoint_every` epochs and after the last, the state is saved to the registry with
the optimizer state, so `--resume` continues exactly where the last save left off.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
from rich.console import Console

from zoo import hub, multihost
from zoo.errors import InvalidValueError, NotFoundError, ZooError
from zoo.training.config import TrainConfig
from zoo.training.evaluate import make_evaluator
from zoo.training.experiment import (
    Experiment,
    build_experiment,
    initial_state,
    restore_state,
    save_checkpoint,
)
from zoo.training.finetune import start_from
from zoo.training.pipeline import DeviceSplit, epoch_order, training_batch
from zoo.training.recipe import mixing
from zoo.training.report import Reporter, host_metrics
from zoo.training.sharding import replicate, replicated
from zoo.training.state import TrainState, learning_rate_at_step
from zoo.training.step import Metrics, train_step, zero_metrics

# Progress-bar updates per epoch; each is one device -> host fetch of the metric sums.
REFRESHES_PER_EPOCH = 10


class TrainingDiverged(ZooError, FloatingPointError):
    """The loss became NaN or infinite; the registry keeps the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """How a run ended: its registry name, last registry step and epoch, last metrics."""

    name: str
    step: int
    epoch: int
    metrics: dict[str, float]
    wall_seconds: float


def fit(config: TrainConfig, *, resume: bool = False, console: Console | None = None) -> FitResult:
    """Trains `config.model` on `config.dataset`, saving to the registry as `config.run_name`.

    With `resume`, continues the latest checkpoint of that name (which must exist); without, a
    new run starts, and under a name that exists its checkpoints follow the latest one.
    Raises `TrainingDiverged` on a NaN/Inf loss, and `ValueError`,
    `TypeError`, `KeyError` or `FileNotFoundError` for bad settings, before any training.
    """
    # With several processes (`zoo.training.distributed`) only the primary prints and logs.
    primary = multihost.is_primary()
    console = (console or Console()) if primary else Console(quiet=True)
    latest = _check_name_state(config, resume)
    experiment = build_experiment(config)
    start = _starting_point(experiment, resume, latest)
    state, start_epoch, history = start.state, start.epoch, list(start.history)

    console.print(_describe(experiment, start_epoch), highlight=False, soft_wrap=True)
    if start.summary:
        console.print(start.summary, highlight=False, soft_wrap=True)
    started = time.monotonic()
    with console.status("compiling"):
        train_fn = _compile_train_step(experiment, state)
        evaluate = make_evaluator(
            experiment.model.apply,
            state.variables,
            experiment.test,
            experiment.preprocessing,
            experiment.eval_batch_size,
            experiment.mesh,
            experiment.task,
        )
    # Jitted: evaluated eagerly, the schedule's few ops would each be compiled on their own.
    learning_rate = jax.jit(learning_rate_at_step(config, experiment.steps_per_epoch))
    metrics: dict[str, float] = {}
    with Reporter(
        console,
        config.log_path if primary else None,
        epochs=config.epochs,
        steps_per_epoch=experiment.steps_per_epoch,
        append=resume,
    ) as reporter:
        reporter.write(
            "start",
            config=config.to_dict(),
            resumed_at_epoch=start_epoch,
            devices=experiment.mesh.size,
            device_kind=jax.devices()[0].device_kind,
            compile_seconds=time.monotonic() - started,
        )
        for epoch in range(start_epoch, config.epochs):
            epoch_started = time.monotonic()
            state, train_metrics = _train_epoch(experiment, train_fn, state, epoch, reporter)
            train_seconds = time.monotonic() - epoch_started
            metrics = {
                **train_metrics,
                **host_metrics(jax.device_get(evaluate(state.variables)), "val"),
            }
            if state.ema:  # The weight average, on the same compiled evaluation.
                metrics.update(host_metrics(jax.device_get(evaluate(state.ema)), "ema_val"))
            _check_finite(metrics, experiment, epoch, step=int(state.step))
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "lr": float(learning_rate(state.step - 1)),
                **metrics,
                "images_per_second": experiment.steps_per_epoch * config.batch_size / train_seconds,
                "epoch_seconds": time.monotonic() - epoch_started,
                "wall_seconds": time.monotonic() - started,
            }
            history.append(record)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                record["checkpoint_step"] = start.step_offset + int(state.step)
                save_checkpoint(
                    experiment,
                    state,
                    step=record["checkpoint_step"],
                    epoch=epoch + 1,
                    metrics=metrics,
                    history=history,
                    wall_seconds=record["wall_seconds"],
                    keep_through=start.step_offset,
                    init_from=start.init_from,
                )
            reporter.end_epoch(record)
    return FitResult(
        config.run_name,
        start.step_offset + int(state.step),
        config.epochs,
        metrics,
        time.monotonic() - started,
    )


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """Where a run starts: its state, the epochs already done, and its checkpoints' numbering.

    Attributes:
      step_offset: registry step = `step_offset` + optimizer step. A fresh run under a name that
        exists counts on from the latest saved step, so it adds checkpoints to the name and never
        overwrites one; a resumed run keeps the numbering it was saved with.
      history: the epoch records so far (saved with every checkpoint, for `zoo plot curves`).
      init_from: where `--init-from` took the first weights from (`zoo.training.finetune`).
      summary: a line saying so, printed before training.
    """

    state: TrainState
    epoch: int
    step_offset: int
    history: tuple[dict[str, Any], ...]
    init_from: dict[str, Any] | None = None
    summary: str = ""


def _starting_point(experiment: Experiment, resume: bool, latest: int | None) -> StartingPoint:
    """A fresh state at epoch 0, or the latest checkpoint and the epochs it completed."""
    state, config = initial_state(experiment), experiment.config
    if not resume and config.init_from:
        init = start_from(
            state, config.init_from, num_classes=_num_classes(experiment), registry=config.registry
        )
        return StartingPoint(init.state, 0, latest or 0, (), init.source, init.summary)
    if not resume:
        return StartingPoint(state, 0, latest or 0, ())
    state, step, meta = restore_state(experiment, state)
    config, done = experiment.config, int(meta["epoch"])
    if done >= config.epochs:
        raise InvalidValueError(
            f"{config.run_name!r} has trained {done} of {config.epochs} epochs "
            "already; pass a larger --epochs"
        )
    history = tuple(record for record in meta.get("history", ()) if record["epoch"] <= done)
    return StartingPoint(state, done, step - int(state.step), history, meta.get("init_from"))


def _num_classes(experiment: Experiment) -> int | None:
    return experiment.num_classes if experiment.task == "classification" else None


def _describe(experiment: Experiment, start_epoch: int) -> str:
    config, mesh = experiment.config, experiment.mesh
    where = (
        f"resuming {config.run_name} at epoch {start_epoch + 1}"
        if start_epoch
        else (f"saving as {config.run_name}")
    )
    return (
        f"{config.model} on {config.dataset}: {len(experiment.train):,} training / "
        f"{len(experiment.test):,} held-out images, {experiment.steps_per_epoch} steps of "
        f"{config.batch_size} per epoch on {mesh.size} {mesh.devices.flat[0].platform} "
        f"device{'s' if mesh.size > 1 else ''}{_processes()}; {where}"
    )


def _processes() -> str:
    count = jax.process_count()
    return f" in {count} processes" if count > 1 else ""


def _check_name_state(config: TrainConfig, resume: bool) -> int | None:
    """The latest step saved under the run's name; a resumed run needs one (checked first)."""
    latest = hub.latest_step(config.run_name, registry=config.registry)
    if resume and latest is None:
        raise NotFoundError(
            f"nothing to resume: no checkpoint named {config.run_name!r} "
            f"in {hub.registry_root(config.registry)}"
        )
    return latest


TrainFn = Any  # A compiled (state, totals, split, order, key) -> (state, totals).


def _compile_train_step(experiment: Experiment, state: TrainState) -> TrainFn:
    """Compiles the whole training step for these shapes and shardings, once."""
    config = experiment.config
    batch_mixing = mixing(config, experiment.task, experiment.num_classes)

    def step(
        state: TrainState,
        totals: Metrics,
        split: DeviceSplit,
        order: jax.Array,
        augment_key: jax.Array,
    ) -> tuple[TrainState, Metrics]:
        # Every epoch has the same number of steps, so the state knows which batch is next:
        # the host sends nothing per step.
        rows = order[state.step % experiment.steps_per_epoch]
        key = jax.random.fold_in(augment_key, state.step)
        batch = training_batch(
            split,
            rows,
            key,
            experiment.mesh,
            preprocessing=experiment.preprocessing,
            augmentation=experiment.augmentation,
            mixing=batch_mixing,
        )
        state, metrics = train_step(
            state, batch, task=experiment.task, label_smoothing=config.label_smoothing
        )
        return state, jax.tree.map(jnp.add, totals, metrics)

    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=replicated(experiment.mesh))
    order = _epoch_order(experiment, 0)
    totals = replicate(zero_metrics(experiment.task), experiment.mesh)
    return jitted.lower(
        state, totals, experiment.train, order, experiment.keys["augment"]
    ).compile()


def _epoch_order(experiment: Experiment, epoch: int) -> jax.Array:
    order = epoch_order(
        experiment.keys["shuffle"],
        epoch,
        num_examples=len(experiment.train),
        batch_size=experiment.config.batch_size,
    )
    return replicate(order, experiment.mesh)


def _train_epoch(
    experiment: Experiment, train_fn: TrainFn, state: TrainState, epoch: int, reporter: Reporter
) -> tuple[TrainState, dict[str, float]]:
    """One pass over the training split; returns the state and the epoch's mean metrics."""
    steps = experiment.steps_per_epoch
    order = _epoch_order(experiment, epoch)
    totals = replicate(zero_metrics(experiment.task), experiment.mesh)
    refresh_every = max(1, steps // REFRESHES_PER_EPOCH)
    reporter.start_epoch(epoch)
    started = time.monotonic()
    for i in range(steps):
        state, totals = train_fn(state, totals, experiment.train, order, experiment.keys["augment"])
        if (i + 1) % refresh_every == 0 or i + 1 == steps:
            metrics = host_metrics(jax.device_get(totals), "train")
            _check_finite(metrics, experiment, epoch, step=epoch * steps + i + 1)
            reporter.update(
                i + 1,
                metrics,
                (i + 1) * experiment.config.batch_size / (time.monotonic() - started),
            )
    return state, metrics


def _check_finite(metrics: dict[str, float], experiment: Experiment, epoch: int, step: int) -> None:
    bad = {k: v for k, v in metrics.items() if k.endswith("_loss") and not math.isfinite(v)}
    if not bad:
        return
    config = experiment.config
    latest = hub.latest_step(config.run_name, registry=config.registry)
    kept = (
        f"the last good checkpoint, step {latest} of {config.run_name!r}, is kept"
        if latest is not None
        else "no checkpoint was saved"
    )
    what = ", ".join(f"{k} = {v}" for k, v in bad.items())
    raise TrainingDiverged(
        f"training diverged at epoch {epoch + 1}, step {step}: {what} (lr {config.lr:g}); "
        f"{kept}. Try a lower --lr or a longer --warmup-epochs"
    )

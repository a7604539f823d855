"""The training loop: epochs of one compiled step, held-out evaluation, checkpoints, a guard.

The step (gather, augment, preprocess, `train_step`, add metrics) is compiled once, ahead of
time, with the state and the metric sums donated. Metrics stay on the device: the loop fetches
their sums `REFRESHES_PER_EPOCH` times an epoch for the progress bar, never every step, and
each fetch checks the loss is finite. After every epoch the held-out split is evaluated, the
epoch is judged for divergence (`zoo.training.divergence`: a diverged epoch is never saved) and,
every `checkpoint_every` epochs and after the last, the state is saved to the registry with
the optimizer state, so `--resume` continues exactly where the last save left off. With
`checkpoint_every_steps` the state is also saved inside epochs, with the data stream's position
(`DataPosition`), and a resume continues at the very next batch, bit for bit as an uninterrupted
run. The step's inputs come from the run's data path (`Experiment.feed`): the set on the devices,
or batches streamed from storage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from zoo import distributed, files, hub, interrupts
from zoo.data import Dataset
from zoo.errors import (
    InvalidTypeError,
    InvalidValueError,
    NotAFolderError,
    NotFoundError,
    ZooError,
    brief,
)
from zoo.training.config import TrainConfig
from zoo.training.divergence import TrainingDiverged, divergence, non_finite_losses
from zoo.training.evaluate import make_evaluator
from zoo.training.experiment import (
    DataPosition,
    Experiment,
    build_experiment,
    class_names_meta,
    initial_state,
    restore_state,
    save_checkpoint,
)
from zoo.training.finetune import start_from
from zoo.training.pipeline import prepare_batch
from zoo.training.recipe import mixing
from zoo.training.report import Reporter, compiling, host_metrics, tensorboard_dir
from zoo.training.sharding import replicate, replicated
from zoo.training.state import TrainState, learning_rate_at_step
from zoo.training.step import Metrics, train_step, zero_metrics
from zoo.training.streaming import DataWorkerDied

# Progress-bar updates per epoch; each is one device -> host fetch of the metric sums.
REFRESHES_PER_EPOCH = 10


# Called with each epoch's record (a copy): "epoch", "val_loss", "val_accuracy", "lr", ...;
# returning True ends the run after that epoch.
Callback = Callable[[dict[str, Any]], bool | None]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """How a run ended: its registry name, last registry step and epoch, last metrics.

    `unsaved` is the trained model of a run that did not save (`fit(..., save=False)`).
    """

    name: str
    step: int
    epoch: int
    metrics: dict[str, float]
    wall_seconds: float
    registry: str | None = None
    unsaved: hub.LoadedModel | None = None

    @property
    def model(self) -> hub.LoadedModel:
        """The trained model, with `predict` for raw images: the registry's copy if saved."""
        return self.unsaved or hub.load(self.name, step=self.step, registry=self.registry)


def fit(
    config: TrainConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    dataset: Dataset | None = None,
    save: bool = True,
) -> FitResult:
    """Trains `config.model` on `config.dataset`, saving to the registry as `config.run_name`.

    With `resume`, continues the latest checkpoint of that name (which must exist); without, a
    new run starts, and under a name that exists its checkpoints follow the latest one.
    `callbacks` are called with each epoch's record before it is saved; one that returns True
    ends the run after that epoch, which is then saved (`EarlyStopping`). `dataset` trains on
    arrays in memory instead of the named set; without `save` nothing goes to the registry.
    Raises `TrainingDiverged` when an epoch diverges (`zoo.training.divergence`; that epoch is
    not saved), and `ValueError`, `TypeError`, `KeyError` or `FileNotFoundError` for bad
    settings, before any training; a second live run under the same name and registry is
    refused (`zoo.hub.claim_run`). Changes nothing process-wide: the zoo's CPU settings are
    `zoo.configure_cpu()`'s, which `zoo.training.train` applies and a caller of `fit` may.
    """
    check_arguments(config=config, dataset=dataset, callbacks=callbacks, console=console)
    for flag, value in (("resume", resume), ("save", save)):
        if not isinstance(value, bool):
            raise InvalidTypeError(f"{flag} must be True or False, got {value!r}")
    if save:  # Before the claim, which writes there: a read-only registry is one clear line.
        hub.check_writable(config.registry)
    claim = hub.claim_run(config.run_name, registry=config.registry) if save else nullcontext()
    with claim as run_id:
        return _fit(config, resume, console, callbacks, dataset, save, run_id)


def check_arguments(
    *,
    config: Any = None,
    dataset: Any = None,
    callbacks: Any = (),
    console: Any = None,
    dataset_argument: str = "dataset",
) -> None:
    """`InvalidTypeError`s for what `fit` (or `zoo.training.train`) was given in the wrong form.

    `fit`'s `dataset` is a `Dataset` or None; `zoo.training`'s `data` (`dataset_argument="data"`)
    may also be a data set's name or path, as `--dataset` takes it."""
    if config is not None and not isinstance(config, TrainConfig):
        raise InvalidTypeError(
            f"config must be a TrainConfig (zoo.training.configure makes one), got "
            f"{type(config).__name__}"
        )
    named = dataset_argument == "data" and isinstance(dataset, str)
    if dataset is not None and not named and not isinstance(dataset, Dataset):
        also = (
            ', or a data set\'s name or path ("cifar10", "folder:PATH")'
            if dataset_argument == "data"
            else "; a named data set goes in dataset=..."
        )
        raise InvalidTypeError(
            f"{dataset_argument} must be a zoo.data.Dataset (zoo.training.arrays makes one from "
            f"arrays){also}, got {type(dataset).__name__} {brief(dataset)}"
        )
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        raise InvalidTypeError(
            f"callbacks must be a list of functions of an epoch's record ([f]), got "
            f"{type(callbacks).__name__} {brief(callbacks)}"
        )
    for callback in callbacks:
        if not callable(callback):
            raise InvalidTypeError(
                f"each callback must be a function of an epoch's record, got "
                f"{type(callback).__name__} {brief(callback)}"
            )
    if console is not None and not isinstance(console, Console):
        raise InvalidTypeError(f"console must be a rich.console.Console, got {brief(console)}")


def _fit(
    config: TrainConfig,
    resume: bool,
    console: Console | None,
    callbacks: Sequence[Callback],
    dataset: Dataset | None,
    save: bool,
    run_id: str | None,
) -> FitResult:
    # With several processes (`zoo.distributed`) only the primary prints and logs.
    primary = distributed.is_primary()
    console = (console or Console()) if primary else Console(quiet=True)
    latest = _check_name_state(config, resume) if save or resume else None
    if primary:
        _check_log_file(config)
    experiment = build_experiment(config, dataset)
    start = _starting_point(experiment, resume, latest)
    state, start_epoch, history = start.state, start.epoch, list(start.history)

    console.print(_describe(experiment, start.position), highlight=False, soft_wrap=True)
    if experiment.data_summary:
        console.print(experiment.data_summary, highlight=False, soft_wrap=True)
    if start.summary:
        console.print(start.summary, highlight=False, soft_wrap=True)
    if (adapted := _describe_input(experiment)) is not None:
        console.print(adapted, highlight=False, soft_wrap=True)
    if start.schedule_change is not None:
        console.print(
            _describe_schedule_change(start.schedule_change), highlight=False, soft_wrap=True
        )
    started = time.monotonic()
    with compiling(console):
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

    def save_inside(state: TrainState, position: DataPosition, train: dict[str, float]) -> None:
        """A checkpoint inside an epoch (`checkpoint_every_steps`): no held-out metrics."""
        save_checkpoint(
            experiment,
            state,
            step=start.step_offset + int(state.step),
            epoch=position.epoch,
            metrics=train,
            history=history,
            wall_seconds=time.monotonic() - started,
            run_id=start.run_id or run_id,
            init_from=start.init_from,
            position=position,
        )

    # From here on a Ctrl-C stops the run between two steps (`zoo.interrupts`), as any error
    # does: the metrics log records it, and the last checkpoint saved stays the latest.
    with (
        interrupts.responsive(),
        closing(experiment.feed),
        Reporter(
            console,
            config.log_path if primary else None,
            epochs=config.epochs,
            start_epoch=start_epoch,
            steps_per_epoch=experiment.steps_per_epoch,
            append=resume,
            tensorboard=config.tensorboard,
        ) as reporter,
    ):
        reporter.write(
            "start",
            config=config.to_dict(),
            resumed_at_epoch=start_epoch,
            devices=experiment.mesh.size,
            device_kind=jax.devices()[0].device_kind,
            compile_seconds=time.monotonic() - started,
            schedule_change=start.schedule_change,
        )
        for epoch in range(start_epoch, config.epochs):
            epoch_started = time.monotonic()
            first = start.position if epoch == start_epoch else DataPosition(epoch, 0)
            state, train_metrics = _train_epoch(
                experiment,
                train_fn,
                state,
                epoch,
                reporter,
                start.step_offset,
                resume_at=first,
                save_inside=save_inside if save and config.checkpoint_every_steps else None,
            )
            train_seconds = time.monotonic() - epoch_started
            data_wait = train_metrics.pop("data_wait_fraction")
            metrics = {
                **train_metrics,
                **host_metrics(jax.device_get(evaluate(state.variables)), "val"),
            }
            if state.ema:  # The weight average, on the same compiled evaluation.
                metrics.update(host_metrics(jax.device_get(evaluate(state.ema)), "ema_val"))
            _check_diverged(
                divergence(metrics, history, _classes(experiment)),
                experiment,
                epoch,
                step=start.step_offset + int(state.step),
            )
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "lr": float(learning_rate(state.step - 1)),
                **metrics,
                "train_loss_label_smoothing": config.label_smoothing,
                "images_per_second": (experiment.steps_per_epoch - first.step)
                * config.batch_size
                / train_seconds,
                "data_wait_fraction": data_wait,
                "epoch_seconds": time.monotonic() - epoch_started,
                "wall_seconds": time.monotonic() - started,
            }
            if epoch == start_epoch and start.schedule_change is not None:
                record["schedule_change"] = start.schedule_change  # Saved with the history.
            history.append(record)
            stop = any([bool(callback(dict(record))) for callback in callbacks])  # Call all.
            last = epoch + 1 == config.epochs or stop
            if save and (_due(config, epoch, experiment.steps_per_epoch) or last):
                record["checkpoint_step"] = start.step_offset + int(state.step)
                save_checkpoint(
                    experiment,
                    state,
                    step=record["checkpoint_step"],
                    epoch=epoch + 1,
                    metrics=metrics,
                    history=history,
                    wall_seconds=record["wall_seconds"],
                    run_id=start.run_id or run_id,
                    init_from=start.init_from,
                )
            reporter.end_epoch(record, registry_step=start.step_offset + int(state.step))
            if stop:
                break
    step = start.step_offset + int(state.step)
    return FitResult(
        config.run_name,
        step,
        history[-1]["epoch"] if history else start_epoch,
        metrics,
        time.monotonic() - started,
        config.registry,
        _trained_model(experiment, state, step, history) if not save else None,
    )


def _trained_model(
    experiment: Experiment, state: TrainState, step: int, history: list[dict[str, Any]]
) -> hub.LoadedModel:
    """The unsaved result as the registry would load it (`path` is None: it has no folder)."""
    config = experiment.config
    return hub.LoadedModel(
        name=config.run_name,
        model_name=config.model,
        module=experiment.model,
        variables=jax.device_get(state.variables),
        meta={
            "dataset": config.dataset,
            "preprocessing": experiment.preprocessing.to_dict(),
            "metrics": history[-1] if history else {},
            "config": config.to_dict(),
            "history": history,
            **class_names_meta(experiment.class_names),
        },
        step=step,
        path=None,
        source="unsaved",
    )


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """Where a run starts: its state, the epochs already done, and its checkpoints' numbering.

    Attributes:
      step_offset: registry step = `step_offset` + optimizer step. A fresh run under a name that
        exists counts on from the latest saved step, so it adds checkpoints to the name and never
        overwrites one; a resumed run keeps the numbering it was saved with.
      history: the epoch records so far (saved with every checkpoint, for `zoo plot curves`).
      run_id: the resumed run's id, so that it keeps pruning its own steps; None for a new run.
      schedule_change: how a resume with another `epochs` than the saved run's changes the
        learning rate (`_schedule_change`), or None.
      init_from: where `--init-from` took the first weights from (`zoo.training.finetune`).
      summary: a line saying so, printed before training.
      position: where in the data the run continues (a checkpoint inside an epoch resumes at
        its next batch); by default, the start of epoch `epoch`.
    """

    state: TrainState
    epoch: int
    step_offset: int
    history: tuple[dict[str, Any], ...]
    run_id: str | None = None
    schedule_change: dict[str, Any] | None = None
    init_from: dict[str, Any] | None = None
    summary: str = ""
    position: DataPosition | None = None

    def __post_init__(self) -> None:
        if self.position is None:
            object.__setattr__(self, "position", DataPosition(self.epoch, 0))


def _starting_point(experiment: Experiment, resume: bool, latest: int | None) -> StartingPoint:
    """A fresh state at epoch 0, or the latest checkpoint and the epochs it completed."""
    state, config = initial_state(experiment), experiment.config
    if not resume and config.init_from:
        init = start_from(
            state,
            config.init_from,
            num_classes=_classes(experiment),
            registry=config.registry,
            model=experiment.model,
        )
        return StartingPoint(
            init.state, 0, latest or 0, (), init_from=init.source, summary=init.summary
        )
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
    saved = TrainConfig.from_dict(meta["config"], source="saved config")
    change = _schedule_change(saved, config, experiment.steps_per_epoch, int(state.step), step)
    return StartingPoint(
        state,
        done,
        step - int(state.step),
        history,
        meta.get("run_id"),
        change,
        init_from=meta.get("init_from"),
        position=DataPosition.saved(meta, experiment),
    )


def _schedule_change(
    saved: TrainConfig, config: TrainConfig, steps_per_epoch: int, step: int, registry_step: int
) -> dict[str, Any] | None:
    """What resuming under another `epochs` does to the learning rate, or None if nothing.

    The schedule's horizon is the run's `epochs`, so a resume that changes them rebuilds it:
    the run continues on the new schedule from its next step, and its earlier epochs followed the
    old one, so it ends close to, but not exactly where, a straight run of the new length would.
    """
    if saved.epochs == config.epochs:
        return None
    before = learning_rate_at_step(saved, steps_per_epoch)(step)
    after = learning_rate_at_step(config, steps_per_epoch)(step)
    return {
        "epochs": [saved.epochs, config.epochs],
        "registry_step": registry_step,
        "lr": [float(before), float(after)],
    }


def _describe_schedule_change(change: dict[str, Any]) -> str:
    (old, new), (before, after) = change["epochs"], change["lr"]
    return (
        f"--epochs {new} is not the saved run's {old}: the learning-rate schedule is rebuilt for "
        f"{new} epochs, so after registry step {change['registry_step']} the lr is {after:.3g} "
        f"(the {old}-epoch schedule's is {before:.3g}); the epochs trained so far followed the "
        f"{old}-epoch schedule, so the result is close to, not the same as, a straight "
        f"{new}-epoch run"
    )


def _describe(experiment: Experiment, position: DataPosition) -> str:
    config, mesh = experiment.config, experiment.mesh
    if position.step:
        where = (
            f"resuming {config.run_name} at epoch {position.epoch + 1}, step {position.step + 1}"
        )
    elif position.epoch:
        where = f"resuming {config.run_name} at epoch {position.epoch + 1}"
    else:
        where = f"saving as {config.run_name}"
    return (
        f"{config.model} on {config.dataset}: {experiment.train_examples:,} training / "
        f"{experiment.test_examples:,} held-out images, {experiment.steps_per_epoch} steps of "
        f"{config.batch_size} per epoch on {mesh.size} {mesh.devices.flat[0].platform} "
        f"device{'s' if mesh.size > 1 else ''}{_processes()}, {_data_path(experiment)}; {where}"
    )


def _data_path(experiment: Experiment) -> str:
    if experiment.pipeline == "device":
        return "data on the devices"
    workers = experiment.feed.workers
    readers = f"{workers} worker process{'es' if workers > 1 else ''}" if workers else "threads"
    return f"data streamed ({readers})"


def _describe_input(experiment: Experiment) -> str | None:
    """One line when the data set's images are not the model's input as they are."""
    config, preprocessing = experiment.config, experiment.preprocessing
    source, target = preprocessing.source_shape, preprocessing.input_shape
    changes = {"zero-padded": ["zero-padded"], "resized": ["resized (bilinear)"], None: []}[
        preprocessing.resizing
    ]
    if source[-1] != target[-1]:
        changes.append(f"given {target[-1]} channels (the grey one repeated)")
    if not changes:
        return None
    source_text, target_text = ("x".join(map(str, shape)) for shape in (source, target))
    return (
        f"{config.dataset}'s {source_text} images are {' and '.join(changes)} to fit "
        f"{config.model}'s {target_text} input"
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


def _check_log_file(config: TrainConfig) -> None:
    """The metrics log (and its TensorBoard folder) can be written, and not into a registry."""
    path = config.log_path
    hub.check_outside_registries(path, "metrics log", registry=config.registry)
    if config.tensorboard:
        hub.check_outside_registries(
            tensorboard_dir(path), "TensorBoard folder", registry=config.registry
        )
    if path.is_dir():
        raise NotAFolderError(f"metrics log {path} is a folder; --log wants a file name")
    files.check_writable(path.parent, "metrics log folder")


TrainFn = Any  # A compiled (state, totals, step inputs, key) -> (state, totals).
# Saves a checkpoint inside an epoch: (state, its data position, the epoch's training metrics).
SaveInside = Callable[[TrainState, DataPosition, dict[str, float]], None]


def _compile_train_step(experiment: Experiment, state: TrainState) -> TrainFn:
    """Compiles the whole training step for these shapes and shardings, once."""
    config, feed = experiment.config, experiment.feed
    batch_mixing = mixing(config, experiment.num_classes)

    def step(
        state: TrainState, totals: Metrics, inputs: Any, augment_key: jax.Array
    ) -> tuple[TrainState, Metrics]:
        raw = feed.raw_batch(inputs, state.step)
        key = jax.random.fold_in(augment_key, state.step)
        batch = prepare_batch(
            raw,
            key,
            preprocessing=experiment.preprocessing,
            augmentation=experiment.augmentation,
            crops=experiment.crops,
            mixing=batch_mixing,
        )
        state, metrics = train_step(
            state, batch, task=experiment.task, label_smoothing=config.label_smoothing
        )
        return state, jax.tree.map(jnp.add, totals, metrics)

    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=replicated(experiment.mesh))
    totals = replicate(zero_metrics(experiment.task, experiment.num_classes), experiment.mesh)
    return jitted.lower(state, totals, feed.compile_inputs(), experiment.keys["augment"]).compile()


def _train_epoch(
    experiment: Experiment,
    train_fn: TrainFn,
    state: TrainState,
    epoch: int,
    reporter: Reporter,
    step_offset: int,
    *,
    resume_at: DataPosition | None = None,
    save_inside: SaveInside | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """One pass over the training split, or its rest from `resume_at` (a position inside this
    epoch); returns the state and the epoch's mean metrics.

    `step_offset` turns the optimizer's step into the registry's (`StartingPoint`). With
    `save_inside`, a checkpoint is saved every `checkpoint_every_steps` steps (the run's, so
    the interval goes on across epochs) but at the epoch's last, which the epoch's end saves.
    """
    steps = experiment.steps_per_epoch
    start = resume_at if resume_at is not None and resume_at.epoch == epoch else None
    start = start or DataPosition(epoch, 0)
    every = experiment.config.checkpoint_every_steps
    totals = replicate(_sums(start.totals, experiment), experiment.mesh)
    refresh_every = max(1, steps // REFRESHES_PER_EPOCH)
    reporter.start_epoch(epoch)
    inputs = experiment.feed.epoch(epoch, start.step)
    started = time.monotonic()
    waited = 0.0  # Blocked on the next batch: the data path is the bottleneck this long.
    for i in range(start.step, steps):
        interrupts.check()  # Between steps: nothing is half-done on the host.
        try:
            asked = time.monotonic()
            step_inputs = next(inputs)
            waited += time.monotonic() - asked
        except (ZooError, DataWorkerDied) as error:
            raise _data_failure(error, experiment, epoch, i) from None
        state, totals = train_fn(state, totals, step_inputs, experiment.keys["augment"])
        if (i + 1) % refresh_every == 0 or i + 1 == steps:
            metrics = host_metrics(jax.device_get(totals), "train")
            _check_diverged(
                non_finite_losses(metrics),
                experiment,
                epoch,
                step=step_offset + epoch * steps + i + 1,
            )
            reporter.update(
                i + 1,
                metrics,
                (i + 1 - start.step) * experiment.config.batch_size / (time.monotonic() - started),
            )
        if save_inside is not None and (epoch * steps + i + 1) % every == 0 and i + 1 < steps:
            sums = {key: float(value) for key, value in jax.device_get(totals).items()}
            save_inside(state, DataPosition(epoch, i + 1, sums), host_metrics(sums, "train"))
    return state, {**metrics, "data_wait_fraction": waited / (time.monotonic() - started)}


def _sums(saved: dict[str, float] | None, experiment: Experiment) -> Metrics:
    """An epoch's metric sums so far: zero, or those a checkpoint inside it saved (float32, as
    they were on the device)."""
    if saved is None:
        return zero_metrics(experiment.task, experiment.num_classes)
    return {key: np.float32(value) for key, value in saved.items()}


def _due(config: TrainConfig, epoch: int, steps_per_epoch: int) -> bool:
    """Whether the end of `epoch` (0-based) is saved: every `checkpoint_every` epochs, and where
    a `checkpoint_every_steps` interval ends on its last step."""
    every_steps = config.checkpoint_every_steps
    by_steps = every_steps is not None and (epoch + 1) * steps_per_epoch % every_steps == 0
    return (epoch + 1) % config.checkpoint_every == 0 or by_steps


def _data_failure(
    error: ZooError | DataWorkerDied, experiment: Experiment, epoch: int, step: int
) -> BaseException:
    """The data stream's `error`, of its own type, saying where the run stopped and that its
    checkpoints are intact."""
    config = experiment.config
    latest = hub.latest_step(config.run_name, registry=config.registry)
    kept = (
        f"step {latest} of {config.run_name!r} is saved: continue with --resume"
        if latest is not None
        else "nothing was saved"
    )
    return type(error)(f"{error} (stopped at epoch {epoch + 1}, step {step + 1}; {kept})")


def _classes(experiment: Experiment) -> int | None:
    """The number of classes of a classifier; None for a reconstruction model."""
    return experiment.num_classes if experiment.task == "classification" else None


def _check_diverged(reason: str | None, experiment: Experiment, epoch: int, step: int) -> None:
    """Raises `TrainingDiverged` for a `reason`, naming steps as the registry numbers them."""
    if reason is None:
        return
    config = experiment.config
    latest = hub.latest_step(config.run_name, registry=config.registry)
    kept = (
        f"{config.run_name!r} still loads its last good checkpoint, step {latest} of the registry"
        if latest is not None
        else f"no checkpoint of {config.run_name!r} was saved"
    )
    raise TrainingDiverged(
        f"training diverged at epoch {epoch + 1}, step {step} (the registry's numbering): "
        f"{reason} (lr {config.lr:g}); this epoch was not saved and {kept}. "
        "Try a lower --lr or a longer --warmup-epochs"
    )

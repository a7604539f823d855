"""Everything a run needs, assembled once from its `TrainConfig`: data, model, optimizer, mesh.

Config flows one way: `TrainConfig` -> data set and `Preprocessing` -> `zoo.create_model` and the
optax optimizer -> a replicated `TrainState` (fresh, or restored from the registry to resume).
`save_checkpoint` writes the state back with everything `zoo.hub.load(...).predict` needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import zoo
from zoo import hub
from zoo.data import Dataset, load_dataset
from zoo.errors import InvalidValueError
from zoo.preprocessing import Preprocessing
from zoo.training.augment import AUGMENTATIONS, Augmentation
from zoo.training.config import TrainConfig, check_resumable
from zoo.training.pipeline import DeviceSplit
from zoo.training.recipe import model_overrides
from zoo.training.sharding import check_batch_size, make_mesh, replicate
from zoo.training.state import TrainState, create_train_state, make_optimizer

COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A run's fixed parts (everything but the `TrainState`).

    Attributes:
      task: the model's objective, "classification" or "reconstruction" (`zoo.training.step`).
      model_config: the `create_model` overrides, as the registry records them.
      input_shape: the model's (H, W, C) input; `preprocessing` maps raw images to it.
      augmentation: what `--augment` does for this data set, or None without `--augment`.
      keys: base PRNG keys "init", "shuffle" and "augment", all from `config.seed`.
    """

    config: TrainConfig
    task: str
    mesh: Mesh
    model_config: dict[str, Any]
    model: nn.Module
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    train: DeviceSplit
    test: DeviceSplit
    num_classes: int
    steps_per_epoch: int
    augmentation: Augmentation | None
    keys: dict[str, jax.Array]

    @property
    def eval_batch_size(self) -> int:
        # No gradients are kept in evaluation: twice the batch fits where the batch did.
        return 2 * self.config.batch_size


def build_experiment(config: TrainConfig, dataset: Dataset | None = None) -> Experiment:
    """Loads the data (or takes `dataset`) and builds model, mesh and keys; cheap checks first."""
    info = zoo.model_info(config.model)
    designed = info.config(**config.model_args)  # Unknown model arguments fail here.
    mesh = make_mesh()
    check_batch_size(config.batch_size, mesh)
    model_config: dict[str, Any] = dict(config.model_args)
    if config.precision != "fp32":
        if "dtype" not in designed:
            raise InvalidValueError(
                f"{config.model} has no dtype field: --precision {config.precision} "
                "is not available for it; use --precision fp32"
            )
        model_config["dtype"] = COMPUTE_DTYPES[config.precision]
    model_config.update(model_overrides(config, info))

    designed_shape = (*designed["input_size"], designed["in_channels"])
    dataset = dataset or load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        image_shape=designed_shape,
        num_classes=designed.get("num_classes"),
    )
    train = dataset.train
    if config.max_train_examples is not None:
        train = train.take(config.max_train_examples)
    if len(train) < config.batch_size:
        raise InvalidValueError(
            f"batch size {config.batch_size} is larger than the {len(train)} "
            f"training examples of {config.dataset}"
        )
    if "num_classes" in designed:
        _check_model_arg(config, "num_classes", dataset.num_classes)
        model_config["num_classes"] = dataset.num_classes
    elif info.num_classes != dataset.num_classes:
        raise InvalidValueError(
            f"{config.model} has {info.num_classes} outputs but {config.dataset} "
            f"has {dataset.num_classes} classes"
        )
    input_shape = _input_shape(info, config, designed_shape, dataset.image_shape)
    model_config["input_size"] = input_shape[:2]
    init, shuffle, augment = jax.random.split(jax.random.key(config.seed), 3)
    return Experiment(
        config=config,
        task=info.task,
        mesh=mesh,
        model_config=model_config,
        model=zoo.create_model(config.model, **model_config),
        input_shape=input_shape,
        preprocessing=Preprocessing.fit(train.images, input_shape),
        train=DeviceSplit.from_host(train, mesh),
        test=DeviceSplit.from_host(dataset.test, mesh),
        num_classes=dataset.num_classes,
        steps_per_epoch=len(train) // config.batch_size,
        augmentation=AUGMENTATIONS[dataset.augmentation] if config.augment else None,
        keys=replicate({"init": init, "shuffle": shuffle, "augment": augment}, mesh),
    )


def _input_shape(
    info: zoo.ModelInfo,
    config: TrainConfig,
    designed: tuple[int, int, int],
    images: tuple[int, int, int],
) -> tuple[int, int, int]:
    """The (H, W, C) the model trains on: the data set's images for a model of any input size
    (resnet18 on CIFAR-10 sees 32x32, not 224x224), else, or where `input_size` is a model
    argument, the size the model was built for. Channels are the model's (grey is repeated)."""
    fixed = info.module(**info.config(**config.model_args)).fixed_input_size
    if fixed or "input_size" in config.model_args:
        return designed
    return (*images[:2], designed[2])


def _check_model_arg(config: TrainConfig, key: str, value: Any) -> None:
    """A model argument the data set decides may be given only with the data set's value."""
    if key in config.model_args and config.model_args[key] != value:
        raise InvalidValueError(
            f"--model-arg {key}={config.model_args[key]!r} does not fit {config.dataset}, "
            f"which has {key} {value!r}"
        )


def initial_state(experiment: Experiment) -> TrainState:
    """A freshly initialised state, replicated over the mesh: initialised eagerly, as a user's
    own `model.init` runs (Flax's values), from this process's copy of the replicated key."""
    key = jax.random.wrap_key_data(np.asarray(jax.random.key_data(experiment.keys["init"])))
    state = create_train_state(
        experiment.model,
        make_optimizer(experiment.config, experiment.steps_per_epoch),
        experiment.input_shape,
        key,
        ema_decay=experiment.config.ema_decay,
        train_only=experiment.config.train_only,
    )
    return replicate(state, experiment.mesh)


def restore_state(
    experiment: Experiment, fresh: TrainState
) -> tuple[TrainState, int, dict[str, Any]]:
    """The latest checkpoint of the run as a replicated state, with its step and metadata.

    `fresh` (an initialised state) gives the structure to restore into. Raises `ValueError` if
    the checkpoint was saved by a run that `experiment.config` does not continue.
    """
    config = experiment.config
    # The metadata first (no weights read): a run this config does not continue is refused
    # before anything is restored; then one verification of the step's files for both trees.
    meta = hub.read_metadata(config.run_name, registry=config.registry)
    check_resumable(TrainConfig.from_dict(meta["config"], source="saved config"), config)
    loaded = hub.load(
        config.run_name, step=meta["step"], registry=config.registry, train_state=fresh.resumable()
    )
    resumable = loaded.train_state
    state = fresh.restored(loaded.variables, resumable)
    return replicate(state, experiment.mesh), loaded.step, loaded.meta


def save_checkpoint(
    experiment: Experiment,
    state: TrainState,
    *,
    step: int,
    epoch: int,
    metrics: dict[str, float],
    history: list[dict[str, Any]],
    wall_seconds: float,
    run_id: str,
    init_from: dict[str, Any] | None = None,
) -> None:
    """Saves variables, the resumable state and the run's metadata as registry step `step`.

    Retention (`max_to_keep`) prunes the checkpoints of run `run_id` only: other runs' steps
    under the name stay.
    """
    config = experiment.config
    best = ("val_accuracy", "max") if experiment.task == "classification" else ("val_loss", "min")
    best = (f"ema_{best[0]}", best[1]) if state.ema else best  # The saved variables' metric.
    hub.save(
        config.run_name,
        model_name=config.model,
        model_config=experiment.model_config,
        variables=state.saved_variables,
        step=step,
        train_state=state.resumable(),
        meta={
            "dataset": config.dataset,
            "preprocessing": experiment.preprocessing.to_dict(),
            "metrics": metrics,
            "config": config.to_dict(),
            "epoch": epoch,
            "history": history,
            "steps_per_epoch": experiment.steps_per_epoch,
            "wall_seconds": wall_seconds,
            "devices": experiment.mesh.size,
            "processes": jax.process_count(),
            # Which weights `variables` are, and where a fine-tuned run's first ones came from.
            "variables": "ema" if state.ema else "raw",
            **({"init_from": init_from} if init_from else {}),
        },
        registry=config.registry,
        max_to_keep=config.max_to_keep,
        best=best,
        run_id=run_id,
    )

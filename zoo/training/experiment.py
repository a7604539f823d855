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
from zoo.data import (
    DEVICE_PATH_MAX_BYTES,
    Dataset,
    DataSource,
    open_dataset,
    read_dataset,
    source_of,
)
from zoo.data.records import FirstRecords
from zoo.data.sampling import (
    BatchPlan,
    CentreCrop,
    EvalReader,
    RandomResizedCrop,
    TrainReader,
    Unchanged,
)
from zoo.errors import InvalidValueError
from zoo.preprocessing import Preprocessing
from zoo.training.augment import Augmentation
from zoo.training.config import TrainConfig, check_for_model, check_resumable
from zoo.training.pipeline import Crops, DeviceFeed, DeviceSplit
from zoo.training.recipe import augmentation, model_overrides
from zoo.training.sharding import check_batch_size, make_mesh, replicate
from zoo.training.state import TrainState, check_train_only, create_train_state, make_optimizer
from zoo.training.streaming import StreamFeed, default_workers, local_rows

COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# The most training images whose pixels the per-channel mean and std are measured on (all of
# MNIST's and CIFAR's); a larger set is sampled.
STATISTICS_ROWS = 65_536


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A run's fixed parts (everything but the `TrainState`).

    Attributes:
      task: the model's objective, "classification" or "reconstruction" (`zoo.training.step`).
      model_config: the `create_model` overrides, as the registry records them.
      input_shape: the model's (H, W, C) input; `preprocessing` maps raw images to it.
      class_names: the data set's names of the classes (`Dataset.class_names`), or None.
      pipeline: "device" (the set held on the devices, `zoo.training.pipeline`) or "streaming"
        (read from storage, `zoo.training.streaming`): `choose_pipeline`.
      feed: each training step's inputs, on that path.
      test: the held-out split: on the devices, or read from storage at every evaluation.
      augmentation: what `--augment` and the warp settings do on the devices to this data
        set's training images (`zoo.training.recipe.augmentation`), or None.
      crops: for images of any size held on the devices, how the step cuts them to size.
      data_fingerprint: identifies the training data; a resume on other data is refused.
      data_summary: what the data listing found (image folders), or None.
      keys: base PRNG keys "init" and "augment", from `config.seed`.
    """

    config: TrainConfig
    task: str
    mesh: Mesh
    model_config: dict[str, Any]
    model: nn.Module
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    pipeline: str
    feed: DeviceFeed | StreamFeed
    test: DeviceSplit | EvalReader
    train_examples: int
    test_examples: int
    num_classes: int
    class_names: tuple[str, ...] | None
    steps_per_epoch: int
    augmentation: Augmentation | None
    crops: Crops | None
    data_fingerprint: str
    data_summary: str | None
    keys: dict[str, jax.Array]

    @property
    def eval_batch_size(self) -> int:
        return eval_batch_size(self.config)


def eval_batch_size(config: TrainConfig) -> int:
    # No gradients are kept in evaluation: twice the batch fits where the batch did.
    return 2 * config.batch_size


def build_experiment(config: TrainConfig, dataset: Dataset | None = None) -> Experiment:
    """Opens the data (or takes `dataset`) and builds model, mesh, data feeds and keys; cheap
    checks first."""
    check_for_model(config)  # The model and its arguments, for a config built by hand too.
    info = zoo.model_info(config.model)
    designed = info.config(**config.model_args)
    if config.train_only is not None:  # Globs that match nothing would train nothing.
        check_train_only(info.module(**designed), config.train_only)
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
    source = (
        source_of(dataset)
        if dataset is not None
        else open_dataset(
            config.dataset,
            data_dir=config.data_dir,
            image_shape=designed_shape,
            num_classes=designed.get("num_classes"),
        )
    )
    check_trainable(source, info.task)
    if "num_classes" in designed:
        _check_model_arg(config, "num_classes", source.num_classes)
        model_config["num_classes"] = source.num_classes
    elif info.num_classes != source.num_classes:
        raise InvalidValueError(
            f"{config.model} has {info.num_classes} outputs but {config.dataset} "
            f"has {source.num_classes} classes"
        )
    input_shape = _input_shape(info, config, designed_shape, source.image_shape)
    model_config["input_size"] = input_shape[:2]
    any_size = source.image_shape is None  # Then cut to size by the ImageNet protocol.
    pipeline = choose_pipeline(config.data_pipeline, source, input_shape)
    data = (_device_data if pipeline == "device" else _streaming_data)(
        config, source, input_shape, mesh
    )
    if data.train_examples < config.batch_size:
        raise InvalidValueError(
            f"batch size {config.batch_size} is larger than the {data.train_examples} "
            f"training examples of {config.dataset}"
        )
    augment_images = augmentation(config, None if any_size else source.augmentation)
    crops = Crops(input_shape[:2], config.augment) if any_size and pipeline == "device" else None
    init, augment = jax.random.split(jax.random.key(config.seed))
    return Experiment(
        config=config,
        task=info.task,
        mesh=mesh,
        model_config=model_config,
        model=zoo.create_model(config.model, **model_config),
        input_shape=input_shape,
        preprocessing=data.preprocessing,
        pipeline=pipeline,
        feed=data.feed,
        test=data.test,
        train_examples=data.train_examples,
        test_examples=len(source.test),
        num_classes=source.num_classes,
        class_names=source.class_names if info.task == "classification" else None,
        steps_per_epoch=data.train_examples // config.batch_size,
        augmentation=augment_images,
        crops=crops,
        data_fingerprint=source.fingerprint,
        data_summary=source.summary,
        keys=replicate({"init": init, "augment": augment}, mesh),
    )


def check_trainable(source: DataSource, task: str) -> None:
    """Raises unless `source` can train and evaluate a model of `task`: both splits hold
    examples and, for a classifier, at least two classes; where the labels are in memory
    (`zoo.training.arrays`, `synthetic`) they are in range and the training ones not all one."""
    for records, what in ((source.train, "training"), (source.test, "held-out")):
        if not len(records):
            raise InvalidValueError(f"{source.name}'s {what} split is empty")
    if task != "classification":
        return
    if source.num_classes < 2:
        raise InvalidValueError(
            f"{source.name} has {source.num_classes} class: a classifier needs at least 2"
        )
    if source.in_memory is None:
        return
    dataset = source.in_memory
    for split in (dataset.train, dataset.test):
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0 or high >= dataset.num_classes:
            raise InvalidValueError(
                f"{dataset.name}'s labels must be in [0, {dataset.num_classes - 1}], "
                f"got labels from {low} to {high}"
            )
    if len(classes := np.unique(dataset.train.labels)) < 2:
        raise InvalidValueError(
            f"{dataset.name}'s training labels are all {int(classes[0])}: a classifier needs "
            "examples of at least 2 classes (it would learn to answer that one)"
        )


def choose_pipeline(requested: str, source: DataSource, input_shape: tuple[int, int, int]) -> str:
    """The data path: `requested` ("device" or "streaming"), or for "auto" the size rule: the
    device path when the set, as the devices would hold it, takes at most
    `DEVICE_PATH_MAX_BYTES`; streaming when larger, or when only reading it all would tell
    (images of any size in a TFDS set)."""
    if requested != "auto":
        return requested
    size = source.device_bytes(input_shape[:2], input_shape[-1])
    return "device" if size is not None and size <= DEVICE_PATH_MAX_BYTES else "streaming"


@dataclasses.dataclass(frozen=True)
class _Data:
    preprocessing: Preprocessing
    feed: DeviceFeed | StreamFeed
    test: DeviceSplit | EvalReader
    train_examples: int


def _device_data(
    config: TrainConfig, source: DataSource, input_shape: tuple[int, int, int], mesh: Mesh
) -> _Data:
    dataset = read_dataset(source, input_shape[:2], input_shape[-1])
    train = dataset.train
    if config.max_train_examples is not None:
        train = train.take(config.max_train_examples)
    if source.image_shape is None:
        preprocessing = Preprocessing.imagenet(input_shape)
    else:
        preprocessing = Preprocessing.fit(train.images[statistics_rows(len(train))], input_shape)
    return _Data(
        preprocessing,
        DeviceFeed(DeviceSplit.from_host(train, mesh), config.seed, config.batch_size, mesh),
        DeviceSplit.from_host(dataset.test, mesh),
        len(train),
    )


def _streaming_data(
    config: TrainConfig, source: DataSource, input_shape: tuple[int, int, int], mesh: Mesh
) -> _Data:
    train = source.train
    if config.max_train_examples is not None:
        train = FirstRecords(train, min(config.max_train_examples, len(train)))
    size, channels = input_shape[:2], input_shape[-1]
    if source.image_shape is None:
        preprocessing = Preprocessing.imagenet(input_shape)
        evaluated = CentreCrop(size, channels)
        transform = RandomResizedCrop(size, channels) if config.augment else evaluated
    else:
        rows = statistics_rows(len(train))
        images = np.stack([np.reshape(train[int(row)][0], source.image_shape) for row in rows])
        preprocessing = Preprocessing.fit(images, input_shape)
        evaluated = transform = Unchanged(source.image_shape)
    plan = BatchPlan(
        config.seed, len(train), config.batch_size, local_rows(mesh, config.batch_size)
    )
    workers = default_workers() if config.data_workers is None else config.data_workers
    eval_batch = eval_batch_size(config)
    return _Data(
        preprocessing,
        StreamFeed(plan, TrainReader(plan, train, transform), mesh, workers),
        EvalReader(source.test, evaluated, eval_batch, local_rows(mesh, eval_batch)),
        len(train),
    )


def statistics_rows(count: int) -> np.ndarray:
    """The training rows whose pixels give the per-channel mean and std: all of them up to
    `STATISTICS_ROWS`, else a seeded sample of that many (the same on both data paths)."""
    if count <= STATISTICS_ROWS:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, STATISTICS_ROWS, replace=False))


def _input_shape(
    info: zoo.ModelInfo,
    config: TrainConfig,
    designed: tuple[int, int, int],
    images: tuple[int, int, int] | None,
) -> tuple[int, int, int]:
    """The (H, W, C) the model trains on: the data set's images for a model of any input size
    (resnet18 on CIFAR-10 sees 32x32, not 224x224), else, or where `input_size` is a model
    argument, or the images have any size, the size the model was built for. Channels are the
    model's (grey is repeated)."""
    fixed = info.module(**info.config(**config.model_args)).fixed_input_size
    if fixed or "input_size" in config.model_args or images is None:
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


def class_names_meta(class_names: tuple[str, ...] | None) -> dict[str, Any]:
    """{"class_names": [...]} for a checkpoint's metadata, or {} when the data set has none."""
    return {} if class_names is None else {hub.CLASS_NAMES: list(class_names)}


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the training data stream of a run is: at step `step` of epoch `epoch` (0-based),
    with the metric sums of the epoch's steps so far (`totals`, fetched from the devices).

    The whole state of either data path: the order, the batches and every random choice of the
    data are functions of the seed and this position (`zoo.data.sampling`, `augment`'s keys).
    """

    epoch: int
    step: int
    totals: dict[str, float] | None = None

    def to_dict(self, experiment: Experiment) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": experiment.steps_per_epoch,
            "pipeline": experiment.pipeline,
            "data": experiment.data_fingerprint,
            **({"totals": self.totals} if self.totals is not None else {}),
        }

    @classmethod
    def saved(cls, meta: dict[str, Any], experiment: Experiment) -> DataPosition:
        """The position a checkpoint's metadata records (at its epoch's end before there were
        mid-epoch checkpoints); other data than the run's is refused."""
        record = meta.get("iterator") or {"epoch": int(meta["epoch"]), "step": 0}
        data, config = record.get("data"), experiment.config
        if data is not None and data != experiment.data_fingerprint:
            raise InvalidValueError(
                f"--resume: {config.dataset} is not the data {config.run_name!r} was trained "
                f"on (saved: {data}, now: {experiment.data_fingerprint}); its order would not "
                "continue. Train under another --name (--init-from takes its weights)"
            )
        return cls(int(record["epoch"]), int(record["step"]), record.get("totals"))


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
    position: DataPosition | None = None,
) -> None:
    """Saves variables, the resumable state and the run's metadata as registry step `step`.

    `epoch` counts the epochs completed; a checkpoint inside an epoch also records where in it
    the data stream is (`position`, as meta["iterator"]), and has no held-out metrics, so it
    never counts as the run's best. Retention (`max_to_keep`) prunes the checkpoints of run
    `run_id` only: other runs' steps under the name stay.
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
            "iterator": (position or DataPosition(epoch, 0)).to_dict(experiment),
            "history": history,
            "steps_per_epoch": experiment.steps_per_epoch,
            "wall_seconds": wall_seconds,
            "devices": experiment.mesh.size,
            "processes": jax.process_count(),
            # Which weights `variables` are, and where a fine-tuned run's first ones came from.
            "variables": "ema" if state.ema else "raw",
            **({"init_from": init_from} if init_from else {}),
            **class_names_meta(experiment.class_names),
        },
        registry=config.registry,
        max_to_keep=config.max_to_keep,
        best=best,
        run_id=run_id,
    )

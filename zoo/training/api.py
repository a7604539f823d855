"""Training from Python, as `zoo train` does it: the same presets, settings and checks.

    import zoo.training
    run = zoo.training.train("lenet5", epochs=5)         # lenet5's preset, 5 epochs
    run.model.predict(raw_uint8_images)

`train` resolves settings exactly as the command line does (`configure`: defaults < the
model's preset < `config_file` < keyword arguments) and runs `loop.fit`; `zoo train` calls it
too. Your own data: `arrays(...)` makes a data set of uint8 NHWC images and integer labels.
Your own model: register it first (`zoo.register`), then train it by name.

`train` is an entry point, as `zoo train` is: it applies the zoo's CPU settings first
(`zoo.configure_cpu()`, which warns if JAX has already started). `loop.fit`, the loop itself,
changes nothing process-wide: a program that calls it calls `configure_cpu()` itself, first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from zoo import hub, runtime
from zoo.data import Dataset, Split
from zoo.errors import InvalidTypeError, InvalidValueError
from zoo.hub.records import decode_config
from zoo.training import loop
from zoo.training.config import TrainConfig, load_config_file, resolve, resumed
from zoo.training.loop import Callback, FitResult


def train(
    model: str | TrainConfig | None = None,
    *,
    data: Dataset | str | None = None,
    config_file: str | Path | None = None,
    resume: bool = False,
    save: bool = True,
    callbacks: Sequence[Callback] = (),
    console: Console | None = None,
    **settings: Any,
) -> FitResult:
    """Trains registered `model` with its preset, updated by `config_file` and `settings`.

    Args:
      model: a registered model name (`zoo.list_models()`; may come from `config_file`), or a
        `TrainConfig` (from `configure`), used as it is.
      data: a data set in memory (`arrays`), or a data set's name or path as `--dataset` takes
        it ("cifar10", "imagenet2012", "folder:~/photos"; the same as `dataset=`).
      config_file: a .json, .toml or .py settings file, as `zoo train --config`.
      resume: continue the latest checkpoint of the run's name with its saved settings
        (`settings` may change only how long it trains and where things go).
      save: save each checkpoint to the registry; without, the result's `model` is in memory.
      callbacks: called with each epoch's record; one returning True stops (`EarlyStopping`).
      console: where progress goes (default: a rich console on stdout).
      **settings: `TrainConfig` fields (epochs=5, lr=0.01, model_args={"hidden": [128]}, ...).

    Applies `zoo.configure_cpu()` first (see the module docstring).

    Returns the `FitResult`: name, registry step, epoch, final metrics, and `.model`, the
    trained model (`predict(raw_uint8_images)`, `module`, `variables`, `meta`).
    """
    loop.check_arguments(
        dataset=data, callbacks=callbacks, console=console, dataset_argument="data"
    )
    runtime.configure_cpu()
    if isinstance(model, TrainConfig):
        if config_file is not None or settings:
            raise InvalidValueError("pass settings in the TrainConfig, or a model name with them")
        config = model
    else:
        config = configure(model, data=data, config_file=config_file, resume=resume, **settings)
    in_memory = data if isinstance(data, Dataset) else None
    return loop.fit(
        config, resume=resume, console=console, callbacks=callbacks, dataset=in_memory, save=save
    )


def configure(
    model: str | None = None,
    *,
    data: Dataset | str | None = None,
    config_file: str | Path | None = None,
    resume: bool = False,
    source: str | None = None,
    **settings: Any,
) -> TrainConfig:
    """The run's `TrainConfig`, resolved as `zoo train` resolves it (`train`'s arguments).

    `source` names where `settings` came from in error messages (default: the file, or
    "train()").
    """
    explicit = load_config_file(config_file) if config_file else {}
    explicit.update(settings)
    if model is not None:
        explicit["model"] = model
    if isinstance(data, str):
        if explicit.setdefault("dataset", data) != data:
            raise InvalidValueError(
                f"data={data!r} and dataset={explicit['dataset']!r} name two data sets; give one"
            )
    elif data is not None:
        explicit.setdefault("dataset", data.name)
    loop.check_arguments(dataset=data, dataset_argument="data")
    source = source or str(config_file or "train()")
    if not resume:
        return resolve(explicit, source=source)
    # The name alone finds the run; its saved config supplies everything else.
    name = explicit.get("name")
    if name is None:
        name = resolve(explicit, source=source).run_name
    meta = hub.read_metadata(name, registry=explicit.get("registry"))
    built = decode_config(meta["model_name"], meta["model_config"])
    return resumed(meta["config"], explicit, built)


def arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    name: str = "arrays",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """A data set from arrays: uint8 images (N, H, W[, C]) and integer labels 0..classes-1.

    `num_classes` defaults to the number of `class_names`, else to the largest label plus one.
    `class_names[i]` names label i; the saved model keeps them, and `zoo predict` prints them
    (without, classes are named by their ids). `name` is what the registry records as the run's
    data set. Both splits must hold examples; images that are not uint8 (floats, say: raw images
    are 0..255 as data sets give them) and labels that are not integers are refused, never
    converted.
    """
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise InvalidValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    splits = {
        what: Split(_nhwc(images, what), _labels(labels, what))
        for what, images, labels in (
            ("training", train_images, train_labels),
            ("held-out", test_images, test_labels),
        )
    }
    for what, split in splits.items():
        if not len(split):
            raise InvalidValueError(f"the {what} split is empty: it needs at least one image")
    names = None if class_names is None else _names(class_names)
    classes = (
        num_classes
        or (len(names) if names is not None else 0)
        or int(max(s.labels.max() for s in splits.values())) + 1
    )
    for what, split in splits.items():
        if split.labels.min() < 0 or split.labels.max() >= classes:
            raise InvalidValueError(
                f"{what} labels must be in [0, {classes - 1}], got labels from "
                f"{split.labels.min()} to {split.labels.max()}"
            )
    return Dataset(
        name, splits["training"], splits["held-out"], num_classes=classes, class_names=names
    )


def _names(class_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(class_names, str):  # "abc" would otherwise be three classes a, b and c.
        raise InvalidTypeError(f"class_names must be a sequence of strings, got {class_names!r}")
    return tuple(class_names)


def _nhwc(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise InvalidTypeError(
            f"{what} images must be raw uint8 (0..255, as data sets give them), got "
            f"{images.dtype} (convert with `(x * 255).round().astype(np.uint8)` from [0, 1])"
        )
    return images[..., None] if images.ndim == 3 else images


def _labels(labels: Any, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise InvalidTypeError(
            f"{what} labels must be a 1-D array of integer class ids, got {labels.dtype} of "
            f"shape {labels.shape}"
        )
    # int32 on the device: clipped, an id beyond it stays out of range instead of wrapping.
    int32 = np.iinfo(np.int32)
    return np.clip(labels, int32.min, int32.max).astype(np.int32)


@dataclasses.dataclass
class EarlyStopping:
    """A callback that stops a run once `metric` has not improved for `patience` epochs.

    Improvement means by more than `min_delta`: lower for a loss, higher for an accuracy.
    """

    metric: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    best: float = dataclasses.field(default=math.nan, init=False)
    waited: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str):
            raise InvalidTypeError(f"metric must be a metric's name, got {self.metric!r}")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool):
            raise InvalidTypeError(f"patience must be an integer, got {self.patience!r}")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, int | float):
            raise InvalidTypeError(f"min_delta must be a number, got {self.min_delta!r}")
        if self.patience < 1:
            raise InvalidValueError(f"patience must be at least 1, got {self.patience}")
        if not 0 <= self.min_delta < math.inf:
            raise InvalidValueError(f"min_delta must be a finite number >= 0, got {self.min_delta}")

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.metric not in record:
            raise InvalidValueError(
                f"EarlyStopping: the epoch records have no {self.metric!r}; "
                f"they have {', '.join(sorted(record))}"
            )
        value = record[self.metric]
        sign = 1.0 if "accuracy" in self.metric else -1.0
        if math.isnan(self.best) or sign * (value - self.best) > self.min_delta:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
        return self.waited >= self.patience

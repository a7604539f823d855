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
from zoo.errors import InvalidValueError
from zoo.training import loop
from zoo.training.config import TrainConfig, load_config_file, resolve, resumed
from zoo.training.loop import Callback, FitResult


def train(
    model: str | TrainConfig | None = None,
    *,
    data: Dataset | None = None,
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
      data: a data set in memory (`arrays`) instead of `settings["dataset"]`'s named one.
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
    runtime.configure_cpu()
    if isinstance(model, TrainConfig):
        if config_file is not None or settings:
            raise InvalidValueError("pass settings in the TrainConfig, or a model name with them")
        config = model
    else:
        config = configure(model, data=data, config_file=config_file, resume=resume, **settings)
    return loop.fit(
        config, resume=resume, console=console, callbacks=callbacks, dataset=data, save=save
    )


def configure(
    model: str | None = None,
    *,
    data: Dataset | None = None,
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
    if data is not None:
        explicit.setdefault("dataset", data.name)
    source = source or str(config_file or "train()")
    if not resume:
        return resolve(explicit, source=source)
    # The name alone finds the run; its saved config supplies everything else.
    name = explicit.get("name")
    if name is None:
        name = resolve(explicit, source=source).run_name
    saved = hub.read_metadata(name, registry=explicit.get("registry"))["config"]
    return resumed(saved, explicit)


def arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    name: str = "arrays",
    num_classes: int | None = None,
) -> Dataset:
    """A data set from arrays: uint8 images (N, H, W[, C]) and integer labels 0..classes-1.

    `num_classes` defaults to the largest label plus one. `name` is what the registry records
    as the run's data set.
    """
    splits = [
        Split(_nhwc(images), np.asarray(labels, np.int32))
        for images, labels in ((train_images, train_labels), (test_images, test_labels))
    ]
    classes = num_classes or int(max(s.labels.max(initial=0) for s in splits)) + 1
    for split in splits:
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= classes):
            raise InvalidValueError(f"labels must be in [0, {classes - 1}], got {split.labels}")
    return Dataset(name, *splits, num_classes=classes)


def _nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images[..., None] if images.ndim == 3 else images


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
        if self.patience < 1:
            raise InvalidValueError(f"patience must be at least 1, got {self.patience}")

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

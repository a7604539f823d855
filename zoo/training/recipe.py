"""The recipe settings that reach beyond the optimizer: model overrides, augmentation, mixing.

`--drop-path-rate` and `--dropout-rate` become `create_model` overrides for a model with that
field; `--augment` and the warp strengths (`--rotate`, `--elastic-alpha`, ...) the training
images' augmentation; `--mixup` and `--cutmix` become a `BatchMixing` for classifiers. Each is
an error where it cannot apply, never silently ignored.
"""

from __future__ import annotations

from typing import Any

import zoo
from zoo.errors import InvalidValueError
from zoo.registry import ModelInfo
from zoo.training.augment import (
    AUGMENTATIONS,
    Augmentation,
    BatchMixing,
    RandomWarp,
    batch_mixing,
    then,
)
from zoo.training.config import TrainConfig

MODEL_RATES = ("drop_path_rate", "dropout_rate")


def model_overrides(config: TrainConfig, info: ModelInfo) -> dict[str, Any]:
    """{"drop_path_rate": R, "dropout_rate": R} for the rates set, each a field of the model."""
    overrides = {name: getattr(config, name) for name in MODEL_RATES}
    overrides = {name: rate for name, rate in overrides.items() if rate is not None}
    fields = info.config()
    for name in overrides:
        if name not in fields:
            having = ", ".join(_models_with(name)) or "none yet"
            raise InvalidValueError(
                f"{config.model} has no {name} field: --{name.replace('_', '-')} is not "
                f"available for it (models with it: {having})"
            )
    return overrides


WARP_STRENGTHS = ("rotate", "zoom", "shear", "translate", "elastic_alpha")


def augmentation(config: TrainConfig, kind: str | None) -> Augmentation | None:
    """The training images' augmentation: the data set's `kind` (`Dataset.augmentation`) with
    `--augment`, then a `RandomWarp` where any warp strength is set; None for neither. Images
    of any size (`kind` None) are cut to size by the ImageNet protocol's crops instead of
    `kind`'s, and warped after them."""
    base = AUGMENTATIONS[kind] if config.augment and kind is not None else None
    if not any(getattr(config, name) for name in WARP_STRENGTHS):
        return base
    warp = RandomWarp(
        **{name: getattr(config, name) for name in WARP_STRENGTHS},
        elastic_sigma=config.elastic_sigma,
    )
    return then(base, warp)


def mixing(config: TrainConfig, num_classes: int) -> BatchMixing | None:
    """The run's mixup/CutMix, or None (only a classifier may set them: `check_for_model`)."""
    return batch_mixing(config.mixup, config.cutmix, num_classes)


def _models_with(field: str) -> list[str]:
    return [name for name in zoo.list_models() if field in zoo.model_info(name).config()]

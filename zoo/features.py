"""Intermediate feature maps of the zoo's CNNs, by stage name: a model used as a backbone.

    zoo.feature_stages("resnet50")    # {"stem": "stem_pool", "stage1": "stage1_block2", ...}
    zoo.feature_info("resnet50")      # channels, reduction (stride) and shape of every stage
    feats = zoo.extract_features(model, variables, x, stages=("stage3", "stage4"))

A stage is the output of one named submodule, recorded by Flax's `capture_intermediates` with a
filter that keeps only the requested modules (so nothing else is stored, and under `jax.jit`
XLA drops the layers after the last requested stage). Every stage is the map the next layer
consumes, i.e. after its activation, like timm's `features_only`: where the model applies the
non-linearity as a plain function right after a module (it has no module of its own, so
`capture_intermediates` cannot see it), the stage records that function and the extractor
applies it to the captured output.

Each model class lists its own stages, next to the modules they name, in a `feature_stages()`
method returning `Stage`s; a model without one raises `NoFeatureStagesError`, and the tests
require one for every registered model whose analytic summary has a spatial (H, W, C) layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax

from zoo.analytic import describe
from zoo.errors import InvalidValueError, ZooError
from zoo.models.base import Stage
from zoo.registry import create_model
from zoo.summary import summary


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """What a stage gives at one input shape (timm's `feature_info`), from the analytic summary.

    Attributes:
      stage: the stage name.
      module: the submodule path whose output the stage is.
      channels: channels of the feature map.
      reduction: the stage's total stride: one step of its map moves this many input pixels.
      shape: (height, width, channels) of the map for the input shape asked for.
    """

    stage: str
    module: str
    channels: int
    reduction: int
    shape: tuple[int, int, int]


class NoFeatureStagesError(ZooError, TypeError):
    """A model class with no `feature_stages` method (e.g. an MLP)."""


def stages_of(model: str | nn.Module, **overrides: Any) -> tuple[Stage, ...]:
    """The `Stage`s of a model (a registry name built with `overrides`, or a module), in order.

    Raises `NoFeatureStagesError` for a model class without a `feature_stages` method.
    """
    module = create_model(model, **overrides) if isinstance(model, str) else model
    declared = getattr(module, "feature_stages", None)
    if declared is None:
        raise NoFeatureStagesError(
            f"{type(module).__name__} has no feature stages: it is not a CNN, or its class "
            "does not list them in a `feature_stages()` method returning zoo.features.Stage"
        )
    return tuple(declared())


def feature_stages(model: str | nn.Module, **overrides: Any) -> dict[str, str]:
    """Stage name -> the module path whose output it is, in network order.

    >>> feature_stages("resnet18")
    {'stem': 'stem_pool', 'stage1': 'stage1_block1', ..., 'stage4': 'stage4_block1'}
    """
    return {stage.name: stage.module for stage in stages_of(model, **overrides)}


def _select(stages: tuple[Stage, ...], names: Sequence[str] | None) -> tuple[Stage, ...]:
    if names is None:
        return stages
    if isinstance(names, str):
        names = (names,)
    known = {stage.name: stage for stage in stages}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidValueError(
            f"unknown stage(s) {', '.join(map(repr, unknown))}; "
            f"this model's stages are {', '.join(known)}"
        )
    wanted = set(names)
    return tuple(stage for stage in stages if stage.name in wanted)


def extract_features(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: jax.Array,
    stages: Sequence[str] | None = None,
    *,
    train: bool = False,
    rngs: Mapping[str, jax.Array] | None = None,
) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, Any]]:
    """The feature maps of `stages` (all by default) for NHWC inputs `x`.

    Returns {stage name: (N, H, W, C) array} in inference mode. With `train=True` the model
    runs in training mode (batch statistics from the batch, dropout and drop-path from
    `rngs["dropout"]`) and the result is `(features, updates)`, `updates` being the updated
    `batch_stats` collection ({} for a model without) to merge into `variables`, as
    `Module.apply(..., mutable=["batch_stats"])` returns it: a backbone trains through this.

    The dict is in network order, but a dict that comes out of `jax.jit` has its keys sorted
    ("stem" after "stage4"): index it by name, in the order `feature_stages(model)` gives. A
    pure function of `variables` and `x`: wrap it in `jax.jit` (with `model` and `stages`
    closed over), and XLA computes nothing past the last requested stage.
    """
    chosen = _select(stages_of(model), stages)
    paths = {tuple(stage.module.split("/")) for stage in chosen}

    def is_wanted(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and module.path in paths

    _, state = model.apply(
        variables,
        x,
        train=train,
        capture_intermediates=is_wanted,
        mutable=["batch_stats"] if train else False,
        rngs=rngs,
    )
    captured = state["intermediates"]
    features = {}
    for stage in chosen:
        node = captured
        for part in stage.module.split("/"):
            node = node[part]
        (output,) = node["__call__"]  # Every stage module is called exactly once.
        features[stage.name] = output if stage.activation is None else stage.activation(output)
    if not train:
        return features
    return features, {key: value for key, value in state.items() if key == "batch_stats"}


# Added to the input height and width to measure strides; a multiple of every product of
# strides a zoo network can have (powers of two up to 256, times 9, 5 or 7).
_STRIDE_PROBE = 2**8 * 9 * 5 * 7


def feature_info(
    model: str, input_shape: tuple[int, int, int] | None = None, **overrides: Any
) -> tuple[FeatureInfo, ...]:
    """Channels, reduction and output shape of every stage of registered model `model`.

    Computed from the analytic summary (`zoo.summary`), so no variables are built. The reduction
    is the stage's total stride: the growth of its map when the input grows by a multiple of
    every stride, measured with the formulas (also for fixed-size models, whose formulas hold
    at any size even if their dense head does not).
    """
    module = create_model(model, **overrides)
    table = summary(model, input_shape, **overrides)
    h, w, c = table.input_shape
    probe = describe(module, (h + _STRIDE_PROBE, w + _STRIDE_PROBE, c))
    shapes = {layer.name: layer.output_shape for layer in table.layers}
    grown = {layer.name: layer.output_shape for layer in probe}
    result = []
    for stage in stages_of(module):
        shape = shapes[stage.module]
        strides = {
            Fraction(_STRIDE_PROBE, grown[stage.module][axis] - shape[axis]) for axis in (0, 1)
        }
        if len(strides) != 1 or min(strides).denominator != 1:
            # One integer per stage, like timm's; no zoo network breaks this.
            raise InvalidValueError(
                f"{model}: stage {stage.name} strides height and width by {sorted(strides)}, "
                "not one integer"
            )
        result.append(FeatureInfo(stage.name, stage.module, shape[-1], int(min(strides)), shape))
    return tuple(result)

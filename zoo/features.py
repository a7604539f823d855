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

The stage tables live here, one per model class in `STAGE_TABLES`; a model class without one
raises `NoFeatureStagesError`, and the tests require one for every registered model whose
analytic summary has a spatial (H, W, C) layer, so a new CNN cannot be registered without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax

from zoo.errors import InvalidValueError, ZooError
from zoo.models.alexnet import AlexNet
from zoo.models.autoencoder import ConvAutoencoder
from zoo.models.cifar_resnet import CifarResNet
from zoo.models.lenet import LeNet5, LeNet5_1998, squash
from zoo.models.resnet import ResNet
from zoo.registry import create_model, model_info
from zoo.summary import summary

Activation = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One feature stage of a model.

    Attributes:
      name: the stage name users ask for ("stage3", "pool5", ...).
      module: the '/'-separated path of the submodule whose output the stage is.
      activation: the function the model applies to that output before the next layer, when
        it is a plain function call rather than a module; None when the output is final.
    """

    name: str
    module: str
    activation: Activation | None = None


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
    """A model class with no stage table (e.g. an MLP, or a new CNN not yet described here)."""


def _resnet_stages(model: ResNet) -> tuple[Stage, ...]:
    # The stem pool's input is already relu(stem_bn); each block ends in its own relu.
    return (Stage("stem", "stem_pool"), *_residual_stages(model.stage_sizes))


def _cifar_resnet_stages(model: CifarResNet) -> tuple[Stage, ...]:
    # No stem pool: the stem's last module is stem_bn, and the model applies relu after it.
    return (Stage("stem", "stem_bn", nn.relu), *_residual_stages(model.stage_sizes))


def _residual_stages(stage_sizes: Sequence[int]) -> tuple[Stage, ...]:
    """stageN is the output of stage N's last block (post-relu, as every block ends)."""
    return tuple(
        Stage(f"stage{i + 1}", f"stage{i + 1}_block{blocks - 1}")
        for i, blocks in enumerate(stage_sizes)
    )


def _lenet5_stages(model: LeNet5) -> tuple[Stage, ...]:
    # Lecture layout: tanh follows each convolution; the average pools' outputs are final.
    return (
        Stage("c1", "c1", nn.tanh),
        Stage("s2", "s2"),
        Stage("c3", "c3", nn.tanh),
        Stage("s4", "s4"),
    )


def _lenet5_1998_stages(model: LeNet5_1998) -> tuple[Stage, ...]:
    # The paper squashes every layer's output, the subsampling layers' included.
    return tuple(Stage(name, name, squash) for name in ("c1", "s2", "c3", "s4"))


def _alexnet_stages(model: AlexNet) -> tuple[Stage, ...]:
    # The pools come after relu (and norm) in every layout; conv3 and conv4 have no module
    # after them before their relu.
    return (
        Stage("pool1", "pool1"),
        Stage("pool2", "pool2"),
        Stage("conv3", "conv3", nn.relu),
        Stage("conv4", "conv4", nn.relu),
        Stage("pool5", "pool5"),
    )


def _autoencoder_stages(model: ConvAutoencoder) -> tuple[Stage, ...]:
    # The encoder's maps; the decoder rebuilds the image and is no backbone.
    return (
        Stage("encoder_conv1", "encoder_conv1", nn.relu),
        Stage("encoder_conv2", "encoder_conv2", nn.relu),
    )


# Model class -> its stages for one configured instance (stage counts follow the config).
# Looked up by exact class: a subclass may lay its modules out differently.
STAGE_TABLES: dict[type[nn.Module], Callable[[Any], tuple[Stage, ...]]] = {
    ResNet: _resnet_stages,
    CifarResNet: _cifar_resnet_stages,
    LeNet5: _lenet5_stages,
    LeNet5_1998: _lenet5_1998_stages,
    AlexNet: _alexnet_stages,
    ConvAutoencoder: _autoencoder_stages,
}


def stages_of(model: str | nn.Module, **overrides: Any) -> tuple[Stage, ...]:
    """The `Stage`s of a model (a registry name built with `overrides`, or a module), in order.

    Raises `NoFeatureStagesError` for a model class with no stage table.
    """
    module = create_model(model, **overrides) if isinstance(model, str) else model
    table = STAGE_TABLES.get(type(module))
    if table is None:
        described = ", ".join(sorted(cls.__name__ for cls in STAGE_TABLES))
        raise NoFeatureStagesError(
            f"{type(module).__name__} has no feature stages (it is not a CNN, or its stage "
            f"table is missing from zoo.features.STAGE_TABLES); models with stages: {described}"
        )
    return table(module)


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
) -> dict[str, jax.Array]:
    """The feature maps of `stages` (all by default) for NHWC inputs `x`, in inference mode.

    Returns {stage name: (N, H, W, C) array}. The dict is in network order, but a dict that
    comes out of `jax.jit` has its keys sorted ("stem" after "stage4"): index it by name, in the
    order `feature_stages(model)` gives. A pure function of `variables` and `x`: wrap it in
    `jax.jit` (with `model` and `stages` closed over), and XLA computes nothing past the last
    requested stage.
    """
    chosen = _select(stages_of(model), stages)
    paths = {tuple(stage.module.split("/")) for stage in chosen}

    def is_wanted(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and module.path in paths

    _, state = model.apply(variables, x, train=False, capture_intermediates=is_wanted)
    captured = state["intermediates"]
    features = {}
    for stage in chosen:
        node = captured
        for part in stage.module.split("/"):
            node = node[part]
        (output,) = node["__call__"]  # Every stage module is called exactly once.
        features[stage.name] = output if stage.activation is None else stage.activation(output)
    return features


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
    info = model_info(model)
    module = create_model(model, **overrides)
    table = summary(model, input_shape, **overrides)
    h, w, c = table.input_shape
    probe = info.analytic(module, (h + _STRIDE_PROBE, w + _STRIDE_PROBE, c))
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

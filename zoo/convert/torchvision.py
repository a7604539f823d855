"""torchvision state dicts -> zoo variables, for the zoo models laid out like torchvision.

    state_dict = load_state_dict("resnet50-0676ba61.pth")      # tensors only: runs no code
    converted = convert_state_dict("resnet50", state_dict)
    logits = converted.module.apply(converted.variables, nhwc_images, train=False)

The conversion walks our own model's abstract variables (`jax.eval_shape` of its init), names
the torchvision key of every leaf with one rename table per family, and moves each array into
Flax's layout: convolution kernels OIHW -> HWIO, dense kernels (out, in) -> (in, out), and a
dense layer that reads a flattened map gets its input rows reordered from PyTorch's C, H, W
flattening to our NHWC's H, W, C. Parameters torch keeps bare on a module (ConvNeXt's
`layer_scale`, ViT's `class_token` and `pos_embedding`) map to the module's own key, with the
unit axes NCHW broadcasting needs dropped ((C, 1, 1) -> (C,)); ViT's attention keeps torch's
packed `in_proj_weight` ([q | k | v]) as one kernel. Every leaf must be found with the right
shape, and every torch key used (but BatchNorm's `num_batches_tracked`): anything else is one
`ValueError` listing what did not fit, never a partial conversion. `num_classes` follows the
state dict's classifier, and a ViT's `input_size` its position embeddings.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np

from zoo.errors import InvalidValueError, MissingDependencyError, NotFoundError
from zoo.hub.store import expected_variables
from zoo.models.convnext import VARIANTS as CONVNEXT_VARIANTS
from zoo.models.resnet import VARIANTS as RESNET_VARIANTS
from zoo.models.vit import VARIANTS as VIT_VARIANTS
from zoo.preprocessing import Preprocessing
from zoo.registry import create_model
from zoo.summary import summary

# What torchvision's ImageNet weights expect: 224x224 RGB, standardised with ImageNet's
# per-channel mean and std (the `transforms.Normalize` of its reference recipes).
IMAGENET_PREPROCESSING = Preprocessing(
    source_shape=(224, 224, 3),
    input_shape=(224, 224, 3),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)

# (collection, Flax leaf) -> the torch parameter or buffer name within its module; "" where
# the torch module's own key is the parameter (a bare `nn.Parameter`).
LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",  # BatchNorm's and LayerNorm's affine weight.
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    # ConvNeXt's layer scale, ViT's class token and position embeddings.
    ("params", "gamma"): "",
    ("params", "token"): "",
    ("params", "embedding"): "",
    # `nn.MultiheadAttention`: the packed query-key-value projection and the output projection.
    ("params", "qkv_kernel"): "in_proj_weight",
    ("params", "qkv_bias"): "in_proj_bias",
    ("params", "out_kernel"): "out_proj.weight",
    ("params", "out_bias"): "out_proj.bias",
}
# Buffers torchvision saves that have no Flax counterpart.
IGNORED_SUFFIXES = (".num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class TorchvisionArch:
    """How one torchvision architecture maps onto a zoo model.

    Attributes:
      model_name: the zoo model with the same layout.
      renames: (regex, replacement) per Flax module name, tried in order, the first that matches
        the whole name wins; a name no rule matches is the same in torch ("conv1", "fc").
      classifier: the torch module of the output layer; its weight's rows are `num_classes`.
      flattened: Flax dense layer -> the module whose (H, W, C) output it reads flattened.
      config_from: the model config beyond `num_classes` that the state dict decides (a ViT's
        `input_size`, from its position embeddings), or None.
    """

    model_name: str
    renames: tuple[tuple[str, str], ...]
    classifier: str
    flattened: Mapping[str, str] = dataclasses.field(default_factory=dict)
    config_from: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def torch_module(self, flax_path: tuple[str, ...]) -> str:
        """The torch module name of a Flax module path, e.g. stage2_block0/downsample_conv ->
        layer2.0.downsample.0."""
        return ".".join(self._rename(name) for name in flax_path)

    def _rename(self, name: str) -> str:
        for pattern, replacement in self.renames:
            match = re.fullmatch(pattern, name)
            if match:
                return match.expand(replacement)
        return name


RESNET_RENAMES = (
    ("stem_conv", "conv1"),
    ("stem_bn", "bn1"),
    (r"stage(\d+)_block(\d+)", r"layer\1.\2"),
    ("downsample_conv", "downsample.0"),
    ("downsample_bn", "downsample.1"),
)
# torchvision's `features` Sequential interleaves ReLU and MaxPool; `classifier` Dropout and ReLU.
ALEXNET_RENAMES = (
    ("conv1", "features.0"),
    ("conv2", "features.3"),
    ("conv3", "features.6"),
    ("conv4", "features.8"),
    ("conv5", "features.10"),
    ("fc6", "classifier.1"),
    ("fc7", "classifier.4"),
    ("fc8", "classifier.6"),
)

# torchvision's `features` Sequential: the stem (conv, norm), then each stage's blocks, with a
# downsampling (norm, conv) before stages 2-4; `block` is each CNBlock's Sequential (its
# Permutes and GELU hold no weights).
CONVNEXT_RENAMES = (
    ("stem_conv", "features.0.0"),
    ("stem_norm", "features.0.1"),
    *((rf"stage{s}_block(\d+)", rf"features.{2 * s - 1}.\1") for s in range(1, 5)),
    *((f"downsample{s}_norm", f"features.{2 * s - 2}.0") for s in range(2, 5)),
    *((f"downsample{s}_conv", f"features.{2 * s - 2}.1") for s in range(2, 5)),
    ("dwconv", "block.0"),
    ("norm", "block.2"),
    ("pwconv1", "block.3"),
    ("pwconv2", "block.5"),
    ("head_norm", "classifier.0"),
    ("head", "classifier.2"),
)
# `MLPBlock` is a Sequential: Linear, GELU, Dropout, Linear, Dropout.
VIT_RENAMES = (
    ("patch_embed", "conv_proj"),
    ("pos_embedding", "encoder.pos_embedding"),
    (r"block(\d+)", r"encoder.layers.encoder_layer_\1"),
    ("norm1", "ln_1"),
    ("attention", "self_attention"),
    ("norm2", "ln_2"),
    ("mlp_fc1", "mlp.0"),
    ("mlp_fc2", "mlp.3"),
    ("norm", "encoder.ln"),
    ("head", "heads.head"),
)


def vit_input_size(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """{"input_size": (S, S)}: the square image torchvision's ViT was built for (`image_size`),
    from its position embeddings (1 + (S / P)^2 tokens) and its patch convolution (P x P)."""
    for key in ("encoder.pos_embedding", "conv_proj.weight"):
        if key not in state_dict:
            raise InvalidValueError(f"not a torchvision ViT state dict: it has no {key!r}")
    patch = int(np.shape(state_dict["conv_proj.weight"])[-1])
    tokens = int(np.shape(state_dict["encoder.pos_embedding"])[1]) - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise InvalidValueError(
            f"encoder.pos_embedding holds {tokens} patch positions, not a square grid"
        )
    return {"input_size": (side * patch, side * patch)}


ARCHS: dict[str, TorchvisionArch] = {
    **{name: TorchvisionArch(name, RESNET_RENAMES, "fc") for name in RESNET_VARIANTS},
    "alexnet": TorchvisionArch(
        "alexnet_torchvision", ALEXNET_RENAMES, "classifier.6", {"fc6": "avgpool"}
    ),
    **{name: TorchvisionArch(name, CONVNEXT_RENAMES, "classifier.2") for name in CONVNEXT_VARIANTS},
    **{
        name: TorchvisionArch(name, VIT_RENAMES, "heads.head", config_from=vit_input_size)
        for name in VIT_VARIANTS
    },
}


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """A converted state dict: `zoo.create_model(model_name, **model_config)` and its variables."""

    model_name: str
    model_config: dict[str, Any]
    variables: dict[str, Any]

    @property
    def module(self) -> nn.Module:
        return create_model(self.model_name, **self.model_config)


def load_state_dict(path: str | PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch `.pth` file, as float32 (floating) or native numpy arrays.

    Loads with `weights_only=True`, so a file that would run code when unpickled is refused.
    Accepts a plain state dict or a checkpoint dict holding one under 'state_dict' or 'model',
    with or without the 'module.' prefix of (Distributed)DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no state dict file at {path}")
    with path.open("rb") as file:
        head = file.read(len(_ZIP_START))
    if not head.startswith((_ZIP_START, _PICKLE_START)):
        raise InvalidValueError(
            f"{path} is not a PyTorch file: torch.save writes a zip archive (or, before "
            f"PyTorch 1.6, a pickle), and this file starts with {head!r}"
        )
    torch = _import_torch()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # Its unpickler reports a bad file as any of a dozen types.
        raise InvalidValueError(
            f"{path} is not a tensor-only PyTorch file ({_refusal(error)}); it holds more "
            "than tensors, and none of it was run"
        ) from None
    state_dict = _unwrap(loaded, path, torch.Tensor)
    return {
        # DataParallel and DistributedDataParallel save every key under a "module." prefix.
        key.removeprefix("module."): (
            value.to(torch.float32) if value.is_floating_point() else value
        ).numpy()
        for key, value in state_dict.items()
    }


# The first bytes of what `torch.save` writes: a zip archive, or a protocol-2+ pickle (legacy).
_ZIP_START, _PICKLE_START = b"PK\x03\x04", b"\x80"


def _refusal(error: Exception) -> str:
    """What torch's weights-only unpickler objected to, without its advice: the file comes from
    someone else, so nothing here may suggest loading it with code execution allowed."""
    detail = str(error).partition("WeightsUnpickler error:")[2].strip()
    first = detail.splitlines()[0].split(". ")[0].strip() if detail else ""
    if not first or "weights_only" in first or "safe_globals" in first:
        return type(error).__name__
    return first


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "reading .pth files needs PyTorch: pip install 'jax-zoo[torch]'"
        ) from None
    return torch


def _unwrap(loaded: Any, path: Path, tensor_type: type) -> Mapping[str, Any]:
    """The state dict in what `torch.load` returned: the dict itself or its 'state_dict'/'model'."""
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise InvalidValueError(f"{path} holds a {type(loaded).__name__}, expected a state dict")
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, tensor_type)]
    if not_tensors:
        raise InvalidValueError(
            f"{path} is not a state dict: {_some(not_tensors)} are not tensors "
            "(expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    return loaded


def torchvision_arch(arch: str) -> TorchvisionArch:
    """The mapping of torchvision architecture `arch`; `ValueError` naming the supported ones."""
    if arch not in ARCHS:
        raise InvalidValueError(
            f"unsupported torchvision architecture {arch!r}; supported: {', '.join(ARCHS)}"
        )
    return ARCHS[arch]


def convert_state_dict(arch: str, state_dict: Mapping[str, Any]) -> ConvertedModel:
    """The zoo model and variables equal to torchvision's `arch` with weights `state_dict`.

    Args:
      arch: a torchvision architecture name, one of `ARCHS` ("resnet18", ..., "alexnet").
      state_dict: torch key -> array (numpy, or anything `np.asarray` takes).

    Raises `ValueError` for an unknown arch, or a state dict that does not fit the model (every
    missing key, unused key and wrong shape listed).
    """
    mapping = map_state_dict(arch, state_dict)
    spatial = _flattened_inputs(mapping.spec, mapping.config)
    converted = {}
    for path, (key, leaf) in mapping.sources.items():
        _, *module, leaf_name = path
        value = np.asarray(state_dict[key])
        flax_value = _to_flax_layout(value, leaf_name, leaf.shape, spatial.get("/".join(module)))
        converted[path] = flax_value.astype(leaf.dtype)
    return ConvertedModel(
        mapping.spec.model_name, mapping.config, flax.traverse_util.unflatten_dict(converted)
    )


@dataclasses.dataclass(frozen=True)
class StateDictMapping:
    """Where each zoo variable of a converted state dict comes from (`map_state_dict`).

    Attributes:
      spec: the architecture's mapping.
      config: the zoo model's config that the state dict decides (`num_classes`, ...).
      sources: (collection, module..., leaf) Flax path -> (its torch key, the abstract leaf).
    """

    spec: TorchvisionArch
    config: dict[str, Any]
    sources: dict[tuple[str, ...], tuple[str, jax.ShapeDtypeStruct]]


def map_state_dict(arch: str, state_dict: Mapping[str, Any]) -> StateDictMapping:
    """The torch key of every zoo variable for a state dict of torchvision's `arch`, checked as
    `convert_state_dict` checks it (which this is the first half of), from shapes and dtypes
    alone: a value may be anything with `.shape` and `.dtype` (`jax.ShapeDtypeStruct`s of a
    torchvision model built on the meta device, say), or anything `np.asarray` takes."""
    spec = torchvision_arch(arch)
    config = {"num_classes": _num_classes(arch, spec, state_dict)}
    if spec.config_from is not None:
        config.update(spec.config_from(state_dict))
    # The same abstract tree `zoo.hub.save` checks variables against.
    _, target = expected_variables(spec.model_name, config)

    sources, missing, wrong, used = {}, [], [], set()
    for path, leaf in flax.traverse_util.flatten_dict(target).items():
        collection, *module, leaf_name = path
        torch_leaf = LEAF_NAMES[collection, leaf_name]
        key = ".".join(filter(None, (spec.torch_module(tuple(module)), torch_leaf)))
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        shape, dtype = _shape_and_dtype(state_dict[key])
        expected = _torch_shape(leaf_name, leaf.shape)
        if _without_unit_axes(shape) != _without_unit_axes(expected) or not np.issubdtype(
            dtype, np.floating
        ):
            wrong.append(f"{key} is {dtype} {shape}, expected floating {expected}")
            continue
        sources[path] = (key, leaf)
    unused = [k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIXES)]

    problems = [
        f"{label}: {_some(keys)}"
        for label, keys in (
            ("missing torch keys", missing),
            ("wrong shapes or dtypes", wrong),
            ("unmapped torch keys", unused),
        )
        if keys
    ]
    if problems:
        raise InvalidValueError(
            f"state dict does not fit torchvision {arch} (zoo {spec.model_name}, {config}): "
            + "; ".join(problems)
        )
    return StateDictMapping(spec, config, sources)


def _shape_and_dtype(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(value.shape), np.dtype(value.dtype)
    array = np.asarray(value)
    return array.shape, array.dtype


def _num_classes(arch: str, spec: TorchvisionArch, state_dict: Mapping[str, Any]) -> int:
    key = f"{spec.classifier}.weight"
    if key not in state_dict:
        raise InvalidValueError(
            f"not a torchvision {arch} state dict: it has no {key!r} "
            f"(its first keys: {_some(list(state_dict))})"
        )
    return int(np.shape(state_dict[key])[0])


def _flattened_inputs(spec: TorchvisionArch, config: dict[str, Any]) -> dict[str, tuple]:
    """Flax dense layer -> the (H, W, C) map it reads flattened, from the analytic summary."""
    if not spec.flattened:
        return {}
    shapes = {layer.name: layer.output_shape for layer in summary(spec.model_name, **config).layers}
    return {dense: shapes[source] for dense, source in spec.flattened.items()}


def _is_kernel(leaf_name: str) -> bool:
    """Whether a Flax leaf is a convolution's or dense layer's kernel (torch's layout differs)."""
    return leaf_name == "kernel" or leaf_name.endswith("_kernel")


def _torch_shape(leaf_name: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax leaf: kernels HWIO -> OIHW and (in, out) -> (out, in); any
    other leaf the same (up to unit axes: `_without_unit_axes`)."""
    if not _is_kernel(leaf_name):
        return tuple(flax_shape)
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return tuple(reversed(flax_shape))


def _without_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without its size-1 axes: torch's (C, 1, 1) layer scale broadcasts over NCHW as
    our (C,) does over NHWC; the axes of size above 1 keep their order."""
    return tuple(n for n in shape if n != 1)


def _to_flax_layout(
    value: np.ndarray,
    leaf_name: str,
    flax_shape: tuple[int, ...],
    flattened_from: tuple[int, ...] | None,
) -> np.ndarray:
    """A torch weight in Flax's layout; `flattened_from` is the (H, W, C) map a dense reads."""
    if not _is_kernel(leaf_name):
        return value.reshape(flax_shape)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if flattened_from is not None:
        # torch rows index (c, h, w), ours (h, w, c): treat it as an HxW convolution kernel.
        h, w, c = flattened_from
        return value.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return value.T


def _some(keys: list[str], limit: int = 8) -> str:
    """At most `limit` keys, then how many more: error messages stay one readable line."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} ... and {len(keys) - limit} more"

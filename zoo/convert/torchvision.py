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
shape, and every torch key used (but BatchNorm's `num_batches_tracked`, and the training-only
heads an architecture drops: GoogLeNet's `aux1`, `aux2`): anything else is one `ValueError`
listing what did not fit, never a partial conversion. `num_classes` follows the state dict's
classifier (VGG's `hidden` its fc6, a ViT's `input_size` its position embeddings); keys of
older torchvision releases (DenseNet's `norm.1`, what its published files still hold) are read
under their current names.
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
from zoo.models.densenet import VARIANTS as DENSENET_VARIANTS
from zoo.models.efficientnet import STAGES as EFFICIENTNET_STAGES
from zoo.models.efficientnet import VARIANTS as EFFICIENTNET_VARIANTS
from zoo.models.mobilenet_v2 import MobileNetV2
from zoo.models.mobilenet_v3 import SETTINGS as MOBILENET_V3_SETTINGS
from zoo.models.resnet import VARIANTS as RESNET_VARIANTS
from zoo.models.vgg import CONFIGURATIONS as VGG_CONFIGURATIONS
from zoo.models.vgg import VARIANTS as VGG_VARIANTS
from zoo.models.vit import VARIANTS as VIT_VARIANTS
from zoo.preprocessing import Preprocessing
from zoo.registry import create_model
from zoo.summary import summary

# What torchvision's ImageNet weights expect: pictures of any size resized to 256 and centre-
# cropped to 224x224 RGB, standardised with ImageNet's per-channel mean and std (the `Resize`,
# `CenterCrop` and `Normalize` of its reference recipes' evaluation).
IMAGENET_PREPROCESSING = Preprocessing.imagenet((224, 224, 3))

# A classifier head of this many outputs is ImageNet-1k's, whose category names torchvision's
# weights carry (`imagenet_categories`).
IMAGENET_CLASSES = 1000

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
      sized_by: model config field -> the torch module whose weight's rows give its value
        (VGG's `hidden`: fc6's width), like `num_classes` from the classifier.
      config: model config the state dict does not record, as torchvision sets it for its
        published weights (GoogLeNet's `transform_input`).
      dropped: prefixes of torch keys with no zoo counterpart, left out on purpose
        (GoogLeNet's auxiliary classifiers, which torchvision drops after loading too).
      legacy_keys: (regex, replacement) rewrites of key names of older torchvision releases,
        applied to the whole key before anything else.
      sequences: (regex, sequential, layers): a Flax module whose name matches the regex is
        a torch module holding an `nn.Sequential` called `sequential` of `layers` (Flax paths
        below the module, '/'-separated, in torch's order), of which torchvision builds only
        those the block has (no expansion convolution at ratio 1, squeeze-excitation in some
        blocks): each is numbered by its place among those the Flax model has.
      input_size: the side of the images its ImageNet weights were trained on.
      config_from: the model config beyond `num_classes` that the state dict decides (a ViT's
        `input_size`, from its position embeddings), or None.
    """

    model_name: str
    renames: tuple[tuple[str, str], ...]
    classifier: str
    flattened: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sized_by: Mapping[str, str] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    legacy_keys: tuple[tuple[str, str], ...] = ()
    sequences: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    input_size: int = 224
    config_from: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def torch_module(
        self, flax_path: tuple[str, ...], modules: frozenset[tuple[str, ...]] = frozenset()
    ) -> str:
        """The torch module name of a Flax module path, e.g. stage2_block0/downsample_conv ->
        layer2.0.downsample.0; `modules` (every module path of the model) numbers `sequences`."""
        names, i = [], 0
        while i < len(flax_path):
            names.append(self._rename(flax_path[i]))
            numbered = self._numbered(flax_path[: i + 1], flax_path[i + 1 :], modules)
            if numbered is None:
                i += 1
            else:
                names.append(numbered[0])
                i += 1 + numbered[1]
        return ".".join(names)

    def _numbered(
        self, parent: tuple[str, ...], rest: tuple[str, ...], modules: frozenset[tuple[str, ...]]
    ) -> tuple[str, int] | None:
        """("<sequential>.<index>", Flax names it stands for) of `rest`'s first layer where
        `parent` holds one of `sequences`; None elsewhere."""
        for pattern, sequential, layers in self.sequences:
            if not re.fullmatch(pattern, parent[-1]):
                continue
            present = [part for part in map(_path, layers) if (*parent, *part) in modules]
            for index, part in enumerate(present):
                if rest[: len(part)] == part:
                    return f"{sequential}.{index}", len(part)
        return None

    @property
    def preprocessing(self) -> Preprocessing:
        """What its ImageNet weights expect: `IMAGENET_PREPROCESSING` at its input size."""
        size = (self.input_size, self.input_size, 3)
        return dataclasses.replace(IMAGENET_PREPROCESSING, source_shape=size, input_shape=size)

    def _rename(self, name: str) -> str:
        for pattern, replacement in self.renames:
            match = re.fullmatch(pattern, name)
            if match:
                return match.expand(replacement)
        return name


def _path(layer: str) -> tuple[str, ...]:
    return tuple(layer.split("/"))


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


def vgg_renames(
    stages: tuple[tuple[int, ...], ...], batch_norm: bool
) -> tuple[tuple[str, str], ...]:
    """VGG's table: torchvision's `features` Sequential numbers every module of the stages in
    order (conv, [BatchNorm,] ReLU per convolution, a MaxPool per stage); `classifier` is
    Linear, ReLU, Dropout three times."""
    renames, index = [], 0
    for s, widths in enumerate(stages, start=1):
        for i in range(1, len(widths) + 1):
            renames.append((f"conv{s}_{i}", f"features.{index}"))
            if batch_norm:
                renames.append((f"bn{s}_{i}", f"features.{index + 1}"))
            index += 3 if batch_norm else 2
        index += 1  # the stage's max pool
    return (*renames, ("fc6", "classifier.0"), ("fc7", "classifier.3"), ("fc8", "classifier.6"))


# GoogLeNet's names are torchvision's but for the branches' Sequential indices.
GOOGLENET_RENAMES = (
    (r"branch([23])_1x1", r"branch\1.0"),
    (r"branch([23])_3x3", r"branch\1.1"),
    ("branch4_1x1", "branch4.1"),
)
# DenseNet's names are torchvision's inside its `features` Sequential.
DENSENET_RENAMES = ((r"(conv0|norm0|denseblock\d+|transition\d+|norm5)", r"features.\1"),)
# torchvision's published DenseNet files name a dense layer's modules norm.1, conv.1, ...; its
# own loader renames them (`torchvision.models.densenet._load_state_dict`), as this does.
DENSENET_LEGACY_KEYS = (
    (
        r"(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))",
        r"\1\2",
    ),
)

# The mobile networks: torchvision's `features` Sequential holds the stem (0), the blocks and
# the last 1x1 convolution; every Conv2dNormActivation is a Sequential of its conv and its norm.
CONV_NORM_RENAMES = (("stem", "features.0"), ("conv", "0"), ("bn", "1"))
BLOCK_LAYERS = ("expand", "depthwise", "se", "project")


def mobilenet_v2_arch() -> TorchvisionArch:
    # MobileNetV2's InvertedResidual Sequential `conv` holds the project conv and its norm
    # themselves, not a Conv2dNormActivation.
    renames = (
        *CONV_NORM_RENAMES,
        (r"block(\d+)", r"features.\1"),
        ("last_conv", f"features.{len(MobileNetV2().blocks()) + 1}"),
        ("classifier", "classifier.1"),
    )
    layers = ("expand", "depthwise", "project/conv", "project/bn")
    return TorchvisionArch(
        "mobilenet_v2", renames, "classifier.1", sequences=((r"block\d+", "conv", layers),)
    )


def mobilenet_v3_arch(name: str) -> TorchvisionArch:
    size = create_model(name).size
    renames = (
        *CONV_NORM_RENAMES,
        (r"block(\d+)", r"features.\1"),
        ("last_conv", f"features.{len(MOBILENET_V3_SETTINGS[size]) + 1}"),
        ("pre_logits", "classifier.0"),
        ("classifier", "classifier.3"),
    )
    sequences = ((r"block\d+", "block", BLOCK_LAYERS),)
    return TorchvisionArch(name, renames, "classifier.3", sequences=sequences)


EFFICIENTNET_RENAMES = (
    *CONV_NORM_RENAMES,
    (r"stage(\d+)_block(\d+)", r"features.\1.\2"),
    ("last_conv", f"features.{len(EFFICIENTNET_STAGES) + 1}"),
    ("classifier", "classifier.1"),
)


def efficientnet_arch(name: str) -> TorchvisionArch:
    sequences = ((r"stage\d+_block\d+", "block", BLOCK_LAYERS),)
    size = create_model(name).input_size[0]
    return TorchvisionArch(
        name, EFFICIENTNET_RENAMES, "classifier.1", sequences=sequences, input_size=size
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
    **{
        name: TorchvisionArch(
            name,
            vgg_renames(VGG_CONFIGURATIONS[configuration], batch_norm),
            "classifier.6",
            flattened={"fc6": "avgpool"},
            sized_by={"hidden": "classifier.0"},
        )
        for name, (configuration, batch_norm, _) in VGG_VARIANTS.items()
    },
    "googlenet": TorchvisionArch(
        "googlenet",
        GOOGLENET_RENAMES,
        "fc",
        config={"transform_input": True},
        dropped=("aux1.", "aux2."),
    ),
    **{
        name: TorchvisionArch(
            name, DENSENET_RENAMES, "classifier", legacy_keys=DENSENET_LEGACY_KEYS
        )
        for name in DENSENET_VARIANTS
    },
    "mobilenet_v2": mobilenet_v2_arch(),
    "mobilenet_v3_large": mobilenet_v3_arch("mobilenet_v3_large"),
    "mobilenet_v3_small": mobilenet_v3_arch("mobilenet_v3_small"),
    **{name: efficientnet_arch(name) for name in EFFICIENTNET_VARIANTS},
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


def imagenet_categories(arch: str) -> tuple[str, ...]:
    """ImageNet-1k's 1,000 category names in output order, as torchvision's weights for `arch`
    record them (`meta["categories"]`, which ships with torchvision: nothing is downloaded)."""
    torchvision_arch(arch)
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        raise MissingDependencyError(
            "ImageNet's category names come with torchvision: pip install 'jax-zoo[torch]'"
        ) from None
    return tuple(get_model_weights(arch).DEFAULT.meta["categories"])


def torchvision_arch(arch: str) -> TorchvisionArch:
    """The mapping of torchvision architecture `arch`; `ValueError` naming the supported ones."""
    if arch not in ARCHS:
        raise InvalidValueError(
            f"unsupported torchvision architecture {arch!r}; supported: {', '.join(ARCHS)}"
        )
    return ARCHS[arch]


def convert_state_dict(
    arch: str, state_dict: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
) -> ConvertedModel:
    """The zoo model and variables equal to torchvision's `arch` with weights `state_dict`.

    Args:
      arch: a torchvision architecture name, one of `ARCHS` ("resnet18", ..., "alexnet",
        "vgg16", "googlenet", "densenet121", "mobilenet_v2", "convnext_tiny", "vit_b_16", ...).
      state_dict: torch key -> array (numpy, or anything `np.asarray` takes).
      model_config: model settings a state dict does not hold, over the arch's own
        (`TorchvisionArch.config`): e.g. `{"transform_input": False}` for a GoogLeNet trained
        without torchvision's input transform.

    Raises `ValueError` for an unknown arch, or a state dict that does not fit the model (every
    missing key, unused key and wrong shape listed).
    """
    mapping = map_state_dict(arch, state_dict, model_config)
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
      config: the zoo model's config: what the state dict decides (`num_classes`, ...), the
        arch's own settings and the caller's.
      sources: (collection, module..., leaf) Flax path -> (its key in the state dict as given,
        the abstract leaf).
    """

    spec: TorchvisionArch
    config: dict[str, Any]
    sources: dict[tuple[str, ...], tuple[str, jax.ShapeDtypeStruct]]


def map_state_dict(
    arch: str, state_dict: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
) -> StateDictMapping:
    """The torch key of every zoo variable for a state dict of torchvision's `arch`, checked as
    `convert_state_dict` checks it (which this is the first half of), from shapes and dtypes
    alone: a value may be anything with `.shape` and `.dtype` (`jax.ShapeDtypeStruct`s of a
    torchvision model built on the meta device, say), or anything `np.asarray` takes."""
    spec = torchvision_arch(arch)
    original = _original_keys(spec, state_dict)  # current name -> the key as given
    current = {key: state_dict[given] for key, given in original.items()}
    config = {
        "num_classes": _num_classes(arch, spec, current),
        **{field: _rows(arch, current, module) for field, module in spec.sized_by.items()},
        **(spec.config_from(current) if spec.config_from is not None else {}),
        **spec.config,
        **(model_config or {}),
    }
    # The same abstract tree `zoo.hub.save` checks variables against.
    _, target = expected_variables(spec.model_name, config)
    flat_target = flax.traverse_util.flatten_dict(target)
    modules = frozenset(path[1:end] for path in flat_target for end in range(2, len(path)))

    sources, missing, wrong, used = {}, [], [], set()
    for path, leaf in flat_target.items():
        collection, *module, leaf_name = path
        torch_leaf = LEAF_NAMES[collection, leaf_name]
        key = ".".join(filter(None, (spec.torch_module(tuple(module), modules), torch_leaf)))
        if key not in current:
            missing.append(key)
            continue
        used.add(key)
        shape, dtype = _shape_and_dtype(current[key])
        expected = _torch_shape(leaf_name, leaf.shape)
        if _without_unit_axes(shape) != _without_unit_axes(expected) or not np.issubdtype(
            dtype, np.floating
        ):
            wrong.append(f"{key} is {dtype} {shape}, expected floating {expected}")
            continue
        sources[path] = (original[key], leaf)
    unused = [
        k
        for k in current
        if k not in used and not k.endswith(IGNORED_SUFFIXES) and not k.startswith(spec.dropped)
    ]

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
    """A value's shape and NumPy dtype, read without converting it where it says them in
    NumPy's terms (NumPy arrays, `jax.ShapeDtypeStruct`s); anything else through `np.asarray`
    (a torch tensor's `dtype` is torch's own)."""
    try:
        return tuple(value.shape), np.dtype(value.dtype)
    except (AttributeError, TypeError):
        array = np.asarray(value)
        return array.shape, array.dtype


def _original_keys(spec: TorchvisionArch, state_dict: Mapping[str, Any]) -> dict[str, str]:
    """Each key of `state_dict` under its current torchvision name (keys of older releases
    renamed by `legacy_keys`) -> the key as given."""
    names = {}
    for given in state_dict:
        key = given
        for pattern, replacement in spec.legacy_keys:
            key = re.sub(f"^{pattern}$", replacement, key)
        names[key] = given
    return names


def _num_classes(arch: str, spec: TorchvisionArch, state_dict: Mapping[str, Any]) -> int:
    return _rows(arch, state_dict, spec.classifier)


def _rows(arch: str, state_dict: Mapping[str, Any], module: str) -> int:
    """The output width of torch layer `module`: its weight's rows."""
    key = f"{module}.weight"
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

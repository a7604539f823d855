"""ResNet and its two residual blocks; ResNeXt and Wide ResNet as torchvision builds them.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385). `BasicBlock` is Fig. 2 (two 3x3 convolutions), `Bottleneck` is Fig. 5 right
(1x1 reduce, 3x3, 1x1 expand by 4); both compute y = relu(F(x) + shortcut(x)). The ImageNet
networks follow Table 1, in torchvision's "v1.5" layout so that its weights import exactly: the
bottleneck's stride sits on the 3x3 convolution (the paper puts it on the first 1x1), projection
shortcuts (option B) where the shape changes, explicit symmetric padding, BatchNorm eps 1e-5 and
momentum 0.1 in PyTorch's convention. Initialisation is He normal (fan out), as in torchvision.

| name      | block      | blocks per stage | params (1000 classes) |
|-----------|------------|------------------|-----------------------|
| resnet18  | BasicBlock | 2, 2, 2, 2       | 11,689,512            |
| resnet34  | BasicBlock | 3, 4, 6, 3       | 21,797,672            |
| resnet50  | Bottleneck | 3, 4, 6, 3       | 25,557,032            |
| resnet101 | Bottleneck | 3, 4, 23, 3      | 44,549,160            |
| resnet152 | Bottleneck | 3, 8, 36, 3      | 60,192,808            |

ResNeXt and Wide ResNet are torchvision's `ResNet` with two more settings of the bottleneck,
`groups` and `width_per_group`: its 3x3 convolution (and the 1x1s around it) is
int(width * width_per_group / 64) * groups channels wide, the 3x3 split into `groups` groups.

- S. Xie, R. Girshick, P. Dollar, Z. Tu, K. He, "Aggregated Residual Transformations for Deep
  Neural Networks", CVPR 2017 (arXiv:1611.05431), Table 1: ResNeXt-50 (32x4d) is ResNet-50 with
  a grouped 3x3 of 32 groups of 4 channels in its first stage (form (c) of Fig. 3), doubling per
  stage. The 101-layer 32x8d and 64x4d are torchvision's (the paper trains 101 32x4d and 64x4d
  in Table 5).
- S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146). The
  paper widens the basic blocks of pre-activation ResNets (WRN-d-k, Table 1); torchvision's
  `wide_resnet50_2` and `wide_resnet101_2`, followed here, instead double the inner width of
  ResNet-50's and ResNet-101's bottlenecks (`width_per_group=128`), outer widths unchanged.

| name             | blocks per stage | groups x width per group | params (1000 classes) |
|------------------|------------------|--------------------------|-----------------------|
| resnext50_32x4d  | 3, 4, 6, 3       | 32 x 4                   | 25,028,904            |
| resnext101_32x8d | 3, 4, 23, 3      | 32 x 8                   | 88,791,336            |
| resnext101_64x4d | 3, 4, 23, 3      | 64 x 4                   | 83,455,272            |
| wide_resnet50_2  | 3, 4, 6, 3       | 1 x 128                  | 68,883,240            |
| wide_resnet101_2 | 3, 4, 23, 3      | 1 x 128                  | 126,886,696           |

Multiply-accumulates per 224x224 image (convolutions and the classifier, `zoo.summary`; equal to
fvcore's count of torchvision's models, and to torchvision's published GFLOPS): resnet50 4.089 G,
resnext50_32x4d 4.230 G, resnext101_32x8d 16.414 G, resnext101_64x4d 15.460 G, wide_resnet50_2
11.398 G, wide_resnet101_2 22.753 G.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import formulas
from zoo.analytic import Counts, Shape, spatial
from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    BatchNorm,
    GlobalAvgPool,
    MaxPool,
    batch_norm,
    check_choice,
    check_positive,
    check_rate,
    drop_path,
    drop_path_rates,
    explicit_padding,
)
from zoo.ops import Conv, add_relu, initializers
from zoo.registry import register

PAPER = "He et al. 2015, Deep Residual Learning for Image Recognition"
SHORTCUTS = ("projection", "zero_pad")
he_normal = initializers.variance_scaling(2.0, "fan_out", "normal")


class ZeroPadShortcut(nn.Module):
    """Option A shortcut (Sec. 4.2): subsample by `stride`, zero-pad the new channels."""

    features: int
    stride: int

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        h, w, _ = spatial(input_shape, "zero_pad")
        # Every stride-th pixel: the output size of a 1x1 window at that stride.
        size = [formulas.conv_output_size(n, 1, self.stride) for n in (h, w)]
        return Counts("zero_pad", (*size, self.features))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.features - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class _ResidualBlock(nn.Module):
    """What both blocks share: the shortcut and the final relu(F(x) + shortcut(x))."""

    features: int
    stride: int = 1
    shortcut: str = "projection"
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    expansion: ClassVar[int] = 1
    # The block's own row (the add) follows its layers' rows in the analytic summary.
    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        h, w, _ = spatial(input_shape, "residual_add")
        # Both blocks stride once, on a 3x3 convolution padded by 1.
        size = [formulas.conv_output_size(n, 3, self.stride, 1) for n in (h, w)]
        return Counts("residual_add", (*size, self.features * self.expansion))

    def conv(self, features: int, kernel: int, stride: int, name: str, groups: int = 1) -> nn.Conv:
        return Conv(
            features,
            (kernel, kernel),
            stride,
            explicit_padding(kernel // 2),
            feature_group_count=groups,
            use_bias=False,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def norm(self, train: bool, name: str, last: bool = False, relu: bool = False) -> BatchNorm:
        zero = last and self.zero_init_residual
        zero_init = nn.initializers.zeros if zero else None
        return batch_norm(train, self.dtype, self.param_dtype, name, zero_init, relu=relu)

    def add_shortcut(self, x: jax.Array, residual: jax.Array, train: bool) -> jax.Array:
        out_features = self.features * self.expansion
        if needs_projection(x.shape[-1], out_features, self.stride):
            if self.shortcut == "zero_pad":
                x = ZeroPadShortcut(out_features, self.stride, name="shortcut")(x)
            else:
                x = self.conv(out_features, 1, self.stride, "downsample_conv")(x)
                x = self.norm(train, "downsample_bn")(x)
        if train and self.drop_path_rate > 0:
            residual = drop_path(residual, self.drop_path_rate, self.make_rng("dropout"))
        return add_relu(residual, x)


def needs_projection(in_features: int, out_features: int, stride: int) -> bool:
    return stride != 1 or in_features != out_features


class BasicBlock(_ResidualBlock):
    """Fig. 2: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = self.norm(train, "bn1", relu=True)(self.conv(self.features, 3, self.stride, "conv1")(x))
        y = self.norm(train, "bn2", last=True)(self.conv(self.features, 3, 1, "conv2")(y))
        return self.add_shortcut(x, y, train)


class Bottleneck(_ResidualBlock):
    """Fig. 5 right: 1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand by 4.

    With `groups` and `width_per_group` (torchvision's): the 1x1 reduces to
    int(features * width_per_group / 64) * groups channels and the 3x3 is split into `groups`
    groups (ResNeXt; `width_per_group` alone widens it: torchvision's Wide ResNets).
    """

    groups: int = 1
    width_per_group: int = 64

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        inner = int(self.features * (self.width_per_group / 64.0)) * self.groups
        y = self.norm(train, "bn1", relu=True)(self.conv(inner, 1, 1, "conv1")(x))
        conv2 = self.conv(inner, 3, self.stride, "conv2", groups=self.groups)
        y = self.norm(train, "bn2", relu=True)(conv2(y))
        y = self.conv(self.features * 4, 1, 1, "conv3")(y)
        return self.add_shortcut(x, self.norm(train, "bn3", last=True)(y), train)


BLOCKS: dict[str, type[_ResidualBlock]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def block_plan(
    stage_sizes: tuple[int, ...], widths: tuple[int, ...]
) -> Iterator[tuple[str, int, int]]:
    """(name, width, stride) of every residual block; a stride-2 block opens each later stage."""
    for i, (blocks, width) in enumerate(zip(stage_sizes, widths, strict=True)):
        for j in range(blocks):
            yield f"stage{i + 1}_block{j}", width, 2 if i > 0 and j == 0 else 1


def residual_stages(stage_sizes: tuple[int, ...]) -> tuple[Stage, ...]:
    """stageN is the output of stage N's last block (post-relu, as every block ends)."""
    return tuple(
        Stage(f"stage{i + 1}", f"stage{i + 1}_block{blocks - 1}")
        for i, blocks in enumerate(stage_sizes)
    )


def stages_and_classifier(
    model: nn.Module, x: jax.Array, train: bool, block: type[_ResidualBlock], **options: Any
) -> jax.Array:
    """Both ResNet families after their stems: the residual stages, average pool, classifier.

    Called inside `model`'s compact `__call__`, so the blocks become its submodules.
    """
    plan = tuple(block_plan(model.stage_sizes, model.widths))
    rates = drop_path_rates(len(plan), model.drop_path_rate)
    for (name, width, stride), rate in zip(plan, rates, strict=True):
        x = block(
            width,
            stride=stride,
            zero_init_residual=model.zero_init_residual,
            drop_path_rate=rate,
            dtype=model.dtype,
            param_dtype=model.param_dtype,
            name=name,
            **options,
        )(x, train)
    return model.classify(GlobalAvgPool(name="pool")(x))


class ResNet(ImageModel):
    """Table 1 of He et al.: a 7x7/2 stem, a 3x3/2 max pool, four stages, global average pool.

    Attributes:
      stage_sizes: residual blocks in each stage.
      block: "basic" (Fig. 2) or "bottleneck" (Fig. 5).
      width: channels of the stem and of the first stage; each stage doubles it.
      zero_init_residual: start each block's last BatchNorm scale at 0, so every block starts as
        the identity (Goyal et al. 2017); off by default, like torchvision.
      drop_path_rate: stochastic depth in training, rising linearly over the blocks from 0 to
        this rate (`drop_path_rates`); needs a 'dropout' rng. 0 (off) by default.
      groups: groups of each bottleneck's 3x3 convolution (ResNeXt's cardinality).
      width_per_group: channels per group of the bottlenecks' inner width, for a stage width of
        64 (torchvision's `width_per_group`; 64 with one group is ResNet's bottleneck).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    groups: int = 1
    width_per_group: int = 64

    head_name: ClassVar[str] = "fc"

    def __post_init__(self) -> None:
        check_positive(
            "ResNet",
            stage_sizes=self.stage_sizes,
            width=self.width,
            groups=self.groups,
            width_per_group=self.width_per_group,
        )
        check_rate("ResNet", "drop_path_rate", self.drop_path_rate)
        check_choice("ResNet", "block", self.block, tuple(BLOCKS))
        if self.block == "basic" and (self.groups, self.width_per_group) != (1, 64):
            raise InvalidValueError(
                "ResNet: basic blocks take groups=1 and width_per_group=64 only (as in "
                f"torchvision), got groups={self.groups!r} and width_per_group="
                f"{self.width_per_group!r}"
            )
        super().__post_init__()

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each stage (times 4 after a bottleneck): the width, doubling."""
        return tuple(self.width * 2**i for i in range(len(self.stage_sizes)))

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # The stem pool's input is already relu(stem_bn); each block ends in its own relu.
        return (Stage("stem", "stem_pool"), *residual_stages(self.stage_sizes))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        x = Conv(
            self.width,
            (7, 7),
            2,
            explicit_padding(3),
            use_bias=False,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="stem_conv",
        )(x)
        x = batch_norm(train, self.dtype, self.param_dtype, "stem_bn", relu=True)(x)
        x = MaxPool(3, 2, 1, name="stem_pool")(x)
        if self.block == "basic":
            return stages_and_classifier(self, x, train, BasicBlock)
        grouping = {"groups": self.groups, "width_per_group": self.width_per_group}
        return stages_and_classifier(self, x, train, Bottleneck, **grouping)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One registered ImageNet network: its blocks, and torchvision's parameter count."""

    block: str
    stage_sizes: tuple[int, ...]
    params: int  # torchvision's, at 1000 classes
    groups: int = 1
    width_per_group: int = 64
    paper: str = f"{PAPER}, Table 1 (torchvision v1.5 layout)"


RESNEXT_PAPER = (
    "Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks, Table 1 "
    "(torchvision layout)"
)
WIDE_PAPER = (
    "Zagoruyko & Komodakis 2016, Wide Residual Networks; torchvision's bottleneck form "
    "(inner width doubled)"
)
VARIANTS = {
    "resnet18": Variant("basic", (2, 2, 2, 2), 11_689_512),
    "resnet34": Variant("basic", (3, 4, 6, 3), 21_797_672),
    "resnet50": Variant("bottleneck", (3, 4, 6, 3), 25_557_032),
    "resnet101": Variant("bottleneck", (3, 4, 23, 3), 44_549_160),
    "resnet152": Variant("bottleneck", (3, 8, 36, 3), 60_192_808),
    "resnext50_32x4d": Variant("bottleneck", (3, 4, 6, 3), 25_028_904, 32, 4, RESNEXT_PAPER),
    "resnext101_32x8d": Variant("bottleneck", (3, 4, 23, 3), 88_791_336, 32, 8, RESNEXT_PAPER),
    "resnext101_64x4d": Variant("bottleneck", (3, 4, 23, 3), 83_455_272, 64, 4, RESNEXT_PAPER),
    "wide_resnet50_2": Variant("bottleneck", (3, 4, 6, 3), 68_883_240, 1, 128, WIDE_PAPER),
    "wide_resnet101_2": Variant("bottleneck", (3, 4, 23, 3), 126_886_696, 1, 128, WIDE_PAPER),
}


def _description(name: str, variant: Variant) -> str:
    blocks = f"{variant.block} blocks {variant.stage_sizes}"
    if variant.groups > 1:
        return f"ResNeXt, {variant.groups} groups x {variant.width_per_group} channels, {blocks}"
    if variant.width_per_group != 64:
        return f"Wide ResNet, bottlenecks {variant.width_per_group // 64}x as wide, {blocks}"
    return f"ResNet-{name[6:]}, ImageNet layout, {blocks}"


for _name, _variant in VARIANTS.items():
    register(
        _name,
        ResNet,
        block=_variant.block,
        stage_sizes=_variant.stage_sizes,
        groups=_variant.groups,
        width_per_group=_variant.width_per_group,
        num_classes=1000,
        in_channels=3,
        reference_params=_variant.params,
        paper=_variant.paper,
        description=_description(_name, _variant),
    )

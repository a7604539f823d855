"""ResNet and its two residual blocks.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import formulas
from zoo.analytic import Counts, Shape, spatial
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

    def conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        return Conv(
            features,
            (kernel, kernel),
            stride,
            explicit_padding(kernel // 2),
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
    """Fig. 5 right: 1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand by 4."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = self.norm(train, "bn1", relu=True)(self.conv(self.features, 1, 1, "conv1")(x))
        y = self.norm(train, "bn2", relu=True)(self.conv(self.features, 3, self.stride, "conv2")(y))
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
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 64
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0

    head_name: ClassVar[str] = "fc"

    def __post_init__(self) -> None:
        check_positive("ResNet", stage_sizes=self.stage_sizes, width=self.width)
        check_rate("ResNet", "drop_path_rate", self.drop_path_rate)
        check_choice("ResNet", "block", self.block, tuple(BLOCKS))
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
        return stages_and_classifier(self, x, train, BLOCKS[self.block])


VARIANTS = {  # name: (block, stage sizes, torchvision's parameter count at 1000 classes)
    "resnet18": ("basic", (2, 2, 2, 2), 11_689_512),
    "resnet34": ("basic", (3, 4, 6, 3), 21_797_672),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 25_557_032),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 44_549_160),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 60_192_808),
}

for _name, (_block, _stages, _params) in VARIANTS.items():
    register(
        _name,
        ResNet,
        block=_block,
        stage_sizes=_stages,
        num_classes=1000,
        in_channels=3,
        reference_params=_params,
        paper=f"{PAPER}, Table 1 (torchvision v1.5 layout)",
        description=f"ResNet-{_name[6:]}, ImageNet layout, {_block} blocks {_stages}",
    )

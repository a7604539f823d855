"""The CIFAR-10 ResNets of He et al. 2015, Sec. 4.2 and Table 6.

A 3x3 convolution of 16 channels, three stages of n `BasicBlock`s at 16, 32 and 64 channels
(feature maps 32, 16, 8), global average pooling and a 10-way classifier: 6n + 2 weighted layers.
Shortcuts are option A, the paper's choice for CIFAR: identity, or where the shape changes a
stride-2 subsample zero-padded to the new width, so they add no parameters.

| name      | n  | params  | paper's test error |
|-----------|----|---------|--------------------|
| resnet20  | 3  | 269,722 | 8.75%              |
| resnet32  | 5  | 464,154 | 7.51%              |
| resnet44  | 7  | 658,586 | 7.17%              |
| resnet56  | 9  | 853,018 | 6.97%              |
| resnet110 | 18 | 1,727,962 | 6.43%            |
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import batch_norm, check_choice, check_positive, check_rate
from zoo.models.resnet import (
    PAPER,
    SHORTCUTS,
    BasicBlock,
    he_normal,
    residual_stages,
    stages_and_classifier,
)
from zoo.ops import Conv
from zoo.registry import register


class CifarResNet(ImageModel):
    """ResNet-(6n+2) for 32x32 images (He et al. 2015, Sec. 4.2).

    Attributes:
      stage_sizes: BasicBlocks per stage, (n, n, n) in the paper.
      widths: channels of the three stages.
      shortcut: "zero_pad" (option A, the paper's) or "projection" (option B).
      zero_init_residual: start each block's last BatchNorm scale at 0.
      drop_path_rate: stochastic depth in training, rising linearly over the blocks from 0 to
        this rate (see `zoo.models.layers.drop_path_rates`). 0 (off) by default.
    """

    num_classes: int = 10
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)
    stage_sizes: tuple[int, ...] = (3, 3, 3)
    widths: tuple[int, ...] = (16, 32, 64)
    shortcut: str = "zero_pad"
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0

    head_name: ClassVar[str] = "fc"

    def __post_init__(self) -> None:
        check_positive("CifarResNet", stage_sizes=self.stage_sizes, widths=self.widths)
        check_choice("CifarResNet", "shortcut", self.shortcut, SHORTCUTS)
        check_rate("CifarResNet", "drop_path_rate", self.drop_path_rate)
        if len(self.stage_sizes) != len(self.widths):
            raise InvalidValueError(
                f"CifarResNet: stage_sizes {self.stage_sizes!r} and widths "
                f"{self.widths!r} need one entry per stage"
            )
        super().__post_init__()

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # No stem pool: the stem's last module is stem_bn, its ReLU fused.
        return (Stage("stem", "stem_bn"), *residual_stages(self.stage_sizes))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        x = Conv(
            self.widths[0],
            (3, 3),
            1,
            ((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="stem_conv",
        )(x)
        x = batch_norm(train, self.dtype, self.param_dtype, "stem_bn", relu=True)(x)
        return stages_and_classifier(self, x, train, BasicBlock, shortcut=self.shortcut)


VARIANTS = {  # name: (n, parameter count of Table 6 with option A shortcuts)
    "resnet20": (3, 269_722),
    "resnet32": (5, 464_154),
    "resnet44": (7, 658_586),
    "resnet56": (9, 853_018),
    "resnet110": (18, 1_727_962),
}

for _name, (_n, _params) in VARIANTS.items():
    register(
        _name,
        CifarResNet,
        stage_sizes=(_n, _n, _n),
        reference_params=_params,
        paper=f"{PAPER}, Sec. 4.2, Table 6 (option A shortcuts)",
        description=f"CIFAR ResNet-{6 * _n + 2}: 3 stages of {_n} basic blocks, 32x32x3",
    )

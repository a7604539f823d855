"""EfficientNet B0 to B7.

M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019 (arXiv:1905.11946). Table 1 is B0 (`STAGES`): a 3x3/2 stem of 32 channels, seven
stages of MBConv blocks (inverted residuals with squeeze-and-excitation, SiLU), a 1x1
convolution to 4x the last stage's channels, global average pooling, dropout and the
classifier; B1-B7 scale every stage's channels by a width multiplier (rounded to multiples of
8) and its repeats by a depth multiplier (rounded up), Sec. 3.3. In torchvision's layout
(`torchvision.models.efficientnet_b0` ...), so that its weights import exactly: its multipliers,
input sizes (the crop of its weights' transforms) and dropout rates (`VARIANTS`); squeeze-and-
excitation to a quarter of a block's input channels; BatchNorm eps 1e-5 and PyTorch momentum 0.1
for B0-B4, eps 0.001 and momentum 0.01 for B5-B7; stochastic depth rising over the blocks from 0
as torchvision's (`stochastic_depth_rates`: rate * i / blocks); the depthwise convolutions
padded (K - 1) // 2 on each side, where the paper's TensorFlow pads 'SAME' (asymmetric at
stride 2); He normal (fan out) convolutions and a U(-1/sqrt(classes), 1/sqrt(classes))
classifier.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax

from zoo.models.base import ImageModel, Stage
from zoo.models.inverted_residual import InvertedResidual, make_divisible, reduction_stages
from zoo.models.layers import (
    ConvNormAct,
    GlobalAvgPool,
    check_multiplier,
    check_rate,
    stochastic_depth_rates,
)
from zoo.ops import initializers
from zoo.registry import register

PAPER = "Tan & Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"

# Table 1 (B0), stages 2-8: expansion, kernel, first stride, input and output channels, repeats.
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

# name: width and depth multipliers, input size, dropout, torchvision's parameter count. The
# input sizes are the crops of torchvision's weights' transforms (the paper's B2 is 260).
VARIANTS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2, 5_288_548),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2, 7_794_184),
    "efficientnet_b2": (1.1, 1.2, 288, 0.3, 9_109_994),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3, 12_233_232),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4, 19_341_616),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4, 30_389_784),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5, 43_040_704),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5, 66_347_960),
}
# torchvision builds B5-B7 with BatchNorm2d(eps=0.001, momentum=0.01) (the TensorFlow weights'
# constants), B0-B4 with PyTorch's defaults (eps 1e-5, momentum 0.1).
TF_NORM = {"norm_epsilon": 1e-3, "norm_momentum": 0.99}
TF_NORM_VARIANTS = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7")


class EfficientNet(ImageModel):
    """Table 1 of Tan & Le with compound scaling, in torchvision's layout.

    Submodules: `stem`, `stage1_block0` ... (torchvision's `features.1.0` ...; the paper's
    stages 2-8), `last_conv`, `classifier`.

    Attributes:
      width_multiplier: scales every layer's channels, rounded to multiples of 8.
      depth_multiplier: scales every stage's repeats, rounded up.
      dropout_rate: dropout before the classifier in training (needs a 'dropout' rng).
      drop_path_rate: stochastic depth of the residual blocks in training, block i of n
        dropping with drop_path_rate * i / n (torchvision's `stochastic_depth_prob`); needs a
        'dropout' rng.
      norm_epsilon, norm_momentum: the batch norms' (Flax's momentum: PyTorch's 0.1 is 0.9).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    dropout_rate: float = 0.2
    drop_path_rate: float = 0.2
    norm_epsilon: float = 1e-5
    norm_momentum: float = 0.9

    head_name: ClassVar[str] = "classifier"
    # U(-1/sqrt(out), 1/sqrt(out)), torchvision's: variance 1 / (3 out).
    head_kernel_init: ClassVar[Any] = initializers.variance_scaling(1 / 3, "fan_out", "uniform")

    def __post_init__(self) -> None:
        model = "EfficientNet"
        check_multiplier(model, "width_multiplier", self.width_multiplier)
        check_multiplier(model, "depth_multiplier", self.depth_multiplier)
        check_rate(model, "dropout_rate", self.dropout_rate)
        check_rate(model, "drop_path_rate", self.drop_path_rate)
        check_rate(model, "norm_momentum", self.norm_momentum)
        check_multiplier(model, "norm_epsilon", self.norm_epsilon)
        super().__post_init__()

    def channels(self, channels: int) -> int:
        return make_divisible(channels * self.width_multiplier)

    @nn.nowrap
    def blocks(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """(name, expansion, kernel, stride, output channels) of every block, in order."""
        return tuple(
            (f"stage{s}_block{j}", expansion, kernel, stride if j == 0 else 1, self.channels(out))
            for s, (expansion, kernel, stride, _, out, repeats) in enumerate(STAGES, 1)
            for j in range(math.ceil(repeats * self.depth_multiplier))
        )

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        return reduction_stages([("stem", 2), *((b[0], b[3]) for b in self.blocks())])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        norm = {"norm_epsilon": self.norm_epsilon, "norm_momentum": self.norm_momentum}
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype, **norm}
        stem = ConvNormAct(self.channels(32), 3, 2, activation="silu", name="stem", **dtypes)
        x = stem(x, train)
        blocks = self.blocks()
        rates = stochastic_depth_rates(len(blocks), self.drop_path_rate)
        for (name, expansion, kernel, stride, features), rate in zip(blocks, rates, strict=True):
            inputs = x.shape[-1]
            x = InvertedResidual(
                features,
                make_divisible(inputs * expansion),
                kernel_size=kernel,
                stride=stride,
                activation="silu",
                squeeze_channels=max(1, inputs // 4),
                se_activation="silu",
                se_scale_activation="sigmoid",
                drop_path_rate=rate,
                name=name,
                **dtypes,
            )(x, train)
        x = ConvNormAct(4 * x.shape[-1], activation="silu", name="last_conv", **dtypes)(x, train)
        x = GlobalAvgPool(name="pool")(x)
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return self.head()(x)


for _name, (_width, _depth, _size, _dropout, _params) in VARIANTS.items():
    register(
        _name,
        EfficientNet,
        width_multiplier=_width,
        depth_multiplier=_depth,
        input_size=(_size, _size),
        dropout_rate=_dropout,
        **(TF_NORM if _name in TF_NORM_VARIANTS else {}),
        reference_params=_params,
        paper=f"{PAPER}, Table 1 and Sec. 3.3 (torchvision layout)",
        description=(
            f"EfficientNet-B{_name[-1]}: width x{_width}, depth x{_depth}, {_size}x{_size}"
        ),
    )

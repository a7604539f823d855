"""MobileNet V3, large and small.

A. Howard, M. Sandler, G. Chu, L.-C. Chen, B. Chen, M. Tan, W. Wang, Y. Zhu, R. Pang, V.
Vasudevan, Q. V. Le, H. Adam, "Searching for MobileNetV3", ICCV 2019 (arXiv:1905.02244),
Tables 1 (large) and 2 (small): a 3x3/2 stem of 16 channels with hard-swish, inverted residual
blocks (`SETTINGS`: kernel, expanded and output channels, squeeze-and-excitation, activation,
stride), a 1x1 convolution to 6x the last block's channels, global average pooling, a dense
layer to 1280 (large) or 1024 (small) with hard-swish, dropout and the classifier. Squeeze-and-
excitation squeezes to a quarter of the expanded channels (rounded to a multiple of 8), with
ReLU and hard-sigmoid. In torchvision's layout (`torchvision.models.mobilenet_v3_large` /
`_small`), so that its weights import exactly: BatchNorm eps 0.001 and PyTorch momentum 0.01,
dropout 0.2, He normal (fan out) convolutions and N(0, 0.01) dense layers. torchvision's
options for detection backbones (`reduced_tail`, `dilated`) are left out.

| name               | params (1000 classes) | MACs at 224x224 |
|--------------------|-----------------------|-----------------|
| mobilenet_v3_large | 5,483,032             | 217 M           |
| mobilenet_v3_small | 2,542,856             | 56 M            |
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax

from zoo.models.base import ImageModel, Stage
from zoo.models.inverted_residual import InvertedResidual, make_divisible, reduction_stages
from zoo.models.layers import (
    ConvNormAct,
    GlobalAvgPool,
    check_choice,
    check_multiplier,
    check_rate,
)
from zoo.ops import Dense, initializers
from zoo.registry import register

PAPER = "Howard et al. 2019, Searching for MobileNetV3"

# Kernel, expanded channels, output channels, squeeze-and-excitation, activation ("RE": ReLU,
# "HS": hard-swish), stride: Table 1 (large) and Table 2 (small), as torchvision lists them.
SETTINGS = {
    "large": (
        (3, 16, 16, False, "RE", 1),
        (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1),
        (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1),
        (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2),
        (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1),
    ),
    "small": (
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1),
    ),
}
# The dense layer before the classifier (torchvision's `last_channel`).
PRE_LOGITS = {"large": 1280, "small": 1024}
ACTIVATION_NAMES = {"RE": "relu", "HS": "hard_swish"}
# BatchNorm2d(eps=0.001, momentum=0.01) in PyTorch's convention.
NORM = {"norm_epsilon": 1e-3, "norm_momentum": 0.99}


class MobileNetV3(ImageModel):
    """Tables 1 and 2 of Howard et al., in torchvision's layout.

    Submodules: `stem`, `block1` ... `blockN` (torchvision's `features.1` ...), `last_conv`,
    `pre_logits` (its `classifier.0`), `classifier` (its `classifier.3`). `num_classes=0`
    returns the pre-logits features (1280 or 1024, after their hard-swish), as timm does.

    Attributes:
      size: "large" (Table 1) or "small" (Table 2).
      width_multiplier: scales every layer's channels, rounded to multiples of 8.
      dropout_rate: dropout before the classifier in training (needs a 'dropout' rng).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    size: str = "large"
    width_multiplier: float = 1.0
    dropout_rate: float = 0.2

    head_name: ClassVar[str] = "classifier"
    head_kernel_init: ClassVar[Any] = initializers.normal(0.01)

    def __post_init__(self) -> None:
        check_choice("MobileNetV3", "size", self.size, tuple(SETTINGS))
        check_multiplier("MobileNetV3", "width_multiplier", self.width_multiplier)
        check_rate("MobileNetV3", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    def channels(self, channels: int) -> int:
        return make_divisible(channels * self.width_multiplier)

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        blocks = [(f"block{i}", row[-1]) for i, row in enumerate(SETTINGS[self.size], 1)]
        return reduction_stages([("stem", 2), *blocks, ("last_conv", 1)])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype, **NORM}
        settings = SETTINGS[self.size]
        stem = ConvNormAct(self.channels(16), 3, 2, activation="hard_swish", name="stem", **dtypes)
        x = stem(x, train)
        for i, (kernel, expanded, features, se, act, stride) in enumerate(settings, 1):
            expanded = self.channels(expanded)
            x = InvertedResidual(
                self.channels(features),
                expanded,
                kernel_size=kernel,
                stride=stride,
                activation=ACTIVATION_NAMES[act],
                squeeze_channels=make_divisible(expanded // 4) if se else 0,
                se_activation="relu",
                se_scale_activation="hard_sigmoid",
                name=f"block{i}",
                **dtypes,
            )(x, train)
        last = 6 * x.shape[-1]
        x = ConvNormAct(last, activation="hard_swish", name="last_conv", **dtypes)(x, train)
        x = GlobalAvgPool(name="pool")(x)
        pre_logits = Dense(
            self.channels(PRE_LOGITS[self.size]),
            kernel_init=type(self).head_kernel_init,  # torchvision draws both linears alike
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="pre_logits",
        )
        x = nn.hard_swish(pre_logits(x))
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return self.head()(x)


for _size, _params in (("large", 5_483_032), ("small", 2_542_856)):
    register(
        f"mobilenet_v3_{_size}",
        MobileNetV3,
        size=_size,
        reference_params=_params,
        paper=f"{PAPER}, Table {1 if _size == 'large' else 2} (torchvision layout)",
        description=f"MobileNet V3 {_size}: squeeze-and-excitation, hard-swish",
    )

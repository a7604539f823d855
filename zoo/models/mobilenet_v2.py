"""MobileNet V2.

M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381), Table 2: a 3x3/2 stem of 32 channels,
seventeen inverted residual blocks (`INVERTED_RESIDUAL_SETTING`: expansion t, channels c,
repeats n, first stride s), a 1x1 convolution to 1280 channels, global average pooling, dropout
and the classifier. ReLU6 after every expansion and depthwise convolution. In torchvision's
layout (`torchvision.models.mobilenet_v2`), so that its weights import exactly: BatchNorm eps
1e-5 and momentum 0.1 (PyTorch's convention), channels scaled by `width_multiplier` and rounded
with `make_divisible`, dropout 0.2, He normal (fan out) convolutions and a N(0, 0.01) classifier.

| name         | params (1000 classes) | MACs at 224x224 |
|--------------|-----------------------|-----------------|
| mobilenet_v2 | 3,504,872             | 300.8 M         |
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax

from zoo.models.base import ImageModel, Stage
from zoo.models.inverted_residual import InvertedResidual, make_divisible, reduction_stages
from zoo.models.layers import ConvNormAct, GlobalAvgPool, check_multiplier, check_rate
from zoo.ops import initializers
from zoo.registry import register

PAPER = "Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks"

# Table 2: expansion t, output channels c, repeats n, stride s of the first repeat.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(ImageModel):
    """Table 2 of Sandler et al., in torchvision's layout.

    Submodules: `stem`, `block1` ... `block17` (torchvision's `features.1` ... `features.17`),
    `last_conv`, `classifier`.

    Attributes:
      width_multiplier: scales every layer's channels (the paper's alpha), rounded to multiples
        of 8; the last convolution keeps 1280 below 1.
      dropout_rate: dropout before the classifier in training (needs a 'dropout' rng).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    width_multiplier: float = 1.0
    dropout_rate: float = 0.2

    head_name: ClassVar[str] = "classifier"
    head_kernel_init: ClassVar[Any] = initializers.normal(0.01)

    def __post_init__(self) -> None:
        check_rate("MobileNetV2", "dropout_rate", self.dropout_rate)
        check_multiplier("MobileNetV2", "width_multiplier", self.width_multiplier)
        super().__post_init__()

    @nn.nowrap
    def blocks(self) -> tuple[tuple[int, int, int], ...]:
        """(expansion, output channels, stride) of every block, in order."""
        return tuple(
            (t, make_divisible(c * self.width_multiplier), s if i == 0 else 1)
            for t, c, n, s in INVERTED_RESIDUAL_SETTING
            for i in range(n)
        )

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        blocks = [(f"block{i}", stride) for i, (_, _, stride) in enumerate(self.blocks(), 1)]
        return reduction_stages([("stem", 2), *blocks])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        channels = make_divisible(32 * self.width_multiplier)
        x = ConvNormAct(channels, 3, 2, activation="relu6", name="stem", **dtypes)(x, train)
        for i, (expansion, features, stride) in enumerate(self.blocks(), 1):
            x = InvertedResidual(
                features,
                round(x.shape[-1] * expansion),
                stride=stride,
                activation="relu6",
                name=f"block{i}",
                **dtypes,
            )(x, train)
        last = make_divisible(1280 * max(1.0, self.width_multiplier))
        x = ConvNormAct(last, activation="relu6", name="last_conv", **dtypes)(x, train)
        x = GlobalAvgPool(name="pool")(x)
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return self.head()(x)


register(
    "mobilenet_v2",
    MobileNetV2,
    reference_params=3_504_872,
    paper=f"{PAPER}, Table 2 (torchvision layout)",
    description="MobileNet V2, inverted residuals with linear bottlenecks, ReLU6",
)

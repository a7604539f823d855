"""ConvNeXt: a ResNet modernised towards the Swin Transformer's design, block by block.

Z. Liu, H. Mao, C.-Y. Wu, C. Feichtenhofer, T. Darrell, S. Xie, "A ConvNet for the 2020s",
CVPR 2022 (arXiv:2201.03545). A 4x4/4 "patchify" stem; four stages of blocks (Fig. 4 right:
a 7x7 depthwise convolution, LayerNorm, a 1x1 expansion to 4C, GELU, a 1x1 projection back to C,
layer scale, stochastic depth, plus the input); between stages a LayerNorm and a 2x2/2
convolution; global average pooling, LayerNorm and the classifier. The variants are Sec. 3's
(channels C and blocks B per stage), in torchvision's layout so that its weights import exactly
(`zoo.convert.torchvision`): LayerNorm eps 1e-6, layer scale 1e-6 at initialisation, the
1x1 convolutions as dense layers on the channels (as the paper's code writes them), and
torchvision's truncated-normal (std 0.02) initialisation of every convolution and dense layer.
`drop_path_rate` is the last block's stochastic depth, rising linearly from 0 over all blocks
(torchvision's `sd_prob = rate * block / (blocks - 1)`), by default torchvision's per variant.

| name           | C                      | B            | drop path | params (1000 classes) |
|----------------|------------------------|--------------|-----------|-----------------------|
| convnext_tiny  | 96, 192, 384, 768      | 3, 3, 9, 3   | 0.1       | 28,589,128            |
| convnext_small | 96, 192, 384, 768      | 3, 3, 27, 3  | 0.4       | 50,223,688            |
| convnext_base  | 128, 256, 512, 1024    | 3, 3, 27, 3  | 0.5       | 88,591,464            |
| convnext_large | 192, 384, 768, 1536    | 3, 3, 27, 3  | 0.5       | 197,767,336           |
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.analytic import Counts, Shape
from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    GlobalAvgPool,
    LayerScale,
    check_positive,
    check_rate,
    drop_path_by,
    drop_path_noise,
    drop_path_rates,
    explicit_padding,
    gelu,
    layer_norm,
)
from zoo.ops import Conv, Dense, initializers
from zoo.registry import register

PAPER = "Liu et al. 2022, A ConvNet for the 2020s"
# torchvision's `nn.init.trunc_normal_(std=0.02)` of every convolution and dense kernel.
kernel_init = initializers.truncated_normal(0.02)


class ConvNeXtBlock(nn.Module):
    """Fig. 4 right: dwconv 7x7, LayerNorm, 1x1 to 4C, GELU, 1x1 to C, layer scale, + input."""

    features: int
    layer_scale: float = 1e-6
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # The block's own row (the residual add) follows its layers' rows in the analytic summary.
    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return Counts("residual_add", tuple(input_shape))

    @nn.compact
    def __call__(self, x: jax.Array, drop_noise: jax.Array | None = None) -> jax.Array:
        """`drop_noise`: in training with stochastic depth, a uniform draw per example
        (`drop_path_by`); None otherwise."""
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        c = self.features
        y = Conv(
            c,
            (7, 7),
            padding=explicit_padding(3),
            feature_group_count=c,
            kernel_init=kernel_init,
            name="dwconv",
            **dtypes,
        )(x)
        y = layer_norm(self.dtype, self.param_dtype, "norm")(y)
        y = gelu(Dense(4 * c, kernel_init=kernel_init, name="pwconv1", **dtypes)(y))
        y = Dense(c, kernel_init=kernel_init, name="pwconv2", **dtypes)(y)
        y = LayerScale(self.layer_scale, name="layer_scale", **dtypes)(y)
        if drop_noise is not None:
            y = drop_path_by(y, self.drop_path_rate, drop_noise)
        return x.astype(y.dtype) + y


class ConvNeXt(ImageModel):
    """Liu et al. 2022, Sec. 3 and Fig. 4: stem, four stages, average pool, LayerNorm, head.

    Attributes:
      widths: channels C of each stage.
      stage_sizes: blocks B in each stage.
      layer_scale: every block's layer scale at initialisation (1e-6, torchvision's).
      drop_path_rate: stochastic depth of the last block in training, rising linearly from 0
        over the blocks (`drop_path_rates`, torchvision's rule); needs a 'dropout' rng.
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    widths: tuple[int, ...] = (96, 192, 384, 768)
    stage_sizes: tuple[int, ...] = (3, 3, 9, 3)
    layer_scale: float = 1e-6
    drop_path_rate: float = 0.0

    head_name: ClassVar[str] = "head"
    head_kernel_init: ClassVar[Any] = kernel_init

    def __post_init__(self) -> None:
        check_positive("ConvNeXt", widths=self.widths, stage_sizes=self.stage_sizes)
        check_rate("ConvNeXt", "drop_path_rate", self.drop_path_rate)
        if len(self.widths) != len(self.stage_sizes):
            raise InvalidValueError(
                f"ConvNeXt: widths {self.widths} and stage_sizes {self.stage_sizes} must name "
                "the same number of stages"
            )
        super().__post_init__()

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # Each stage's last block, before the next stage's downsampling (timm's `stages_N`).
        return tuple(
            Stage(f"stage{i + 1}", f"stage{i + 1}_block{blocks - 1}")
            for i, blocks in enumerate(self.stage_sizes)
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = Conv(
            self.widths[0], (4, 4), 4, "VALID", kernel_init=kernel_init, name="stem_conv", **dtypes
        )(x)
        x = layer_norm(self.dtype, self.param_dtype, "stem_norm")(x)
        rates = drop_path_rates(sum(self.stage_sizes), self.drop_path_rate)
        noise = None  # One draw for every block's drop path, (blocks, batch).
        if train and self.drop_path_rate > 0:
            noise = drop_path_noise(self.make_rng("dropout"), len(rates), x.shape[0])
        block = 0
        for i, (width, blocks) in enumerate(zip(self.widths, self.stage_sizes, strict=True)):
            stage = i + 1
            if i > 0:
                x = layer_norm(self.dtype, self.param_dtype, f"downsample{stage}_norm")(x)
                x = Conv(
                    width,
                    (2, 2),
                    2,
                    "VALID",
                    kernel_init=kernel_init,
                    name=f"downsample{stage}_conv",
                    **dtypes,
                )(x)
            for j in range(blocks):
                x = ConvNeXtBlock(
                    width,
                    self.layer_scale,
                    rates[block],
                    name=f"stage{stage}_block{j}",
                    **dtypes,
                )(x, None if noise is None or rates[block] == 0 else noise[block])
                block += 1
        x = GlobalAvgPool(name="pool")(x)
        x = layer_norm(self.dtype, self.param_dtype, "head_norm")(x)
        return self.classify(x)


# name: (C per stage, B per stage, torchvision's stochastic depth, its parameter count)
VARIANTS = {
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1, 28_589_128),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4, 50_223_688),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5, 88_591_464),
    "convnext_large": ((192, 384, 768, 1536), (3, 3, 27, 3), 0.5, 197_767_336),
}

for _name, (_widths, _stages, _drop_path, _params) in VARIANTS.items():
    register(
        _name,
        ConvNeXt,
        widths=_widths,
        stage_sizes=_stages,
        drop_path_rate=_drop_path,
        num_classes=1000,
        in_channels=3,
        reference_params=_params,
        paper=f"{PAPER}, Sec. 3 (torchvision layout)",
        description=f"ConvNeXt-{_name[9:].capitalize()}, C={_widths}, B={_stages}",
    )

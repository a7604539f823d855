"""The inverted residual block that MobileNet V2, MobileNet V3 and EfficientNet share.

M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018 (arXiv:1801.04381), Fig. 3b and Table 1: a 1x1 convolution
expands the channels, a KxK depthwise convolution filters each channel on its own, a 1x1
convolution projects back with no activation (the linear bottleneck), and the input is added
where the stride is 1 and the channels stay. MobileNet V3 (Howard et al. 2019, Sec. 5) puts a
squeeze-and-excitation after the depthwise convolution in some blocks; EfficientNet's MBConv
(Tan & Le 2019, after MnasNet) in every block, and drops the residual branch of a block at
random in training (stochastic depth, torchvision's "row" mode: whole examples).

Laid out as torchvision's blocks so that its weights import exactly (`zoo.convert`): each part
is a `ConvNormAct` (the project one with no activation), torchvision leaves out the expansion
where it would not change the channels, and the depthwise convolution is padded (K - 1) // 2
on each side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import formulas
from zoo.analytic import Counts, Shape, spatial
from zoo.models.base import Stage
from zoo.models.layers import ConvNormAct, SqueezeExcitation, drop_path


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's (and TensorFlow's) `_make_divisible`: `value` rounded to the nearest
    multiple of `divisor`, at least `min_value` (default `divisor`), and never below 90% of
    `value` (then one `divisor` more)."""
    minimum = divisor if min_value is None else min_value
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """One inverted residual block; submodules `expand`, `depthwise`, `se`, `project`.

    Attributes:
      features: output channels.
      expanded: channels of the depthwise convolution; `expand` exists where this differs
        from the input's channels.
      kernel_size, stride: of the depthwise convolution.
      activation: after the expansion and the depthwise convolution ("relu6", "relu",
        "hard_swish", "silu").
      squeeze_channels: squeeze-and-excitation's bottleneck width; 0 for none.
      se_activation, se_scale_activation: its two activations.
      drop_path_rate: stochastic depth of the residual branch in training (where there is one);
        needs a 'dropout' rng.
      norm_epsilon, norm_momentum: the batch norms' (Flax's momentum: PyTorch's 0.1 is 0.9).
    """

    features: int
    expanded: int
    kernel_size: int = 3
    stride: int = 1
    activation: str = "relu6"
    squeeze_channels: int = 0
    se_activation: str = "relu"
    se_scale_activation: str = "sigmoid"
    drop_path_rate: float = 0.0
    norm_epsilon: float = 1e-5
    norm_momentum: float = 0.9
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # The block's own row (its output: after the residual add, if any) follows its layers'.
    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        h, w, c = spatial(input_shape, "inverted_residual")
        pad = (self.kernel_size - 1) // 2
        size = [formulas.conv_output_size(n, self.kernel_size, self.stride, pad) for n in (h, w)]
        kind = "residual_add" if self.residual(c) else "inverted_residual"
        return Counts(kind, (*size, self.features))

    def residual(self, in_channels: int) -> bool:
        return self.stride == 1 and in_channels == self.features

    def part(self, features: int, name: str, **options: Any) -> ConvNormAct:
        return ConvNormAct(
            features,
            norm_epsilon=self.norm_epsilon,
            norm_momentum=self.norm_momentum,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **options,
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = x
        if self.expanded != x.shape[-1]:
            y = self.part(self.expanded, "expand", activation=self.activation)(y, train)
        y = self.part(
            self.expanded,
            "depthwise",
            kernel_size=self.kernel_size,
            stride=self.stride,
            groups=self.expanded,
            activation=self.activation,
        )(y, train)
        if self.squeeze_channels:
            y = SqueezeExcitation(
                self.squeeze_channels,
                self.se_activation,
                self.se_scale_activation,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="se",
            )(y)
        y = self.part(self.features, "project")(y, train)
        if not self.residual(x.shape[-1]):
            return y
        if train and self.drop_path_rate > 0:
            y = drop_path(y, self.drop_path_rate, self.make_rng("dropout"))
        return y + x.astype(y.dtype)


def reduction_stages(modules: Iterable[tuple[str, int]]) -> tuple[Stage, ...]:
    """The feature stages of a network given its modules in order, each with its stride: at each
    total stride 2, 4, 8, 16, 32 (timm's `feature_info` levels), the last module's output
    before the next stride; named "stride2" ... "stride32"."""
    last: dict[int, str] = {}
    reduction = 1
    for module, stride in modules:
        reduction *= stride
        last[reduction] = module
    return tuple(Stage(f"stride{r}", last[r]) for r in sorted(last) if r > 1)

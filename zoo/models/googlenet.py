"""GoogLeNet (Inception v1), as torchvision builds it.

C. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (arXiv:1409.4842), Table 1: a
7x7/2 convolution, a 3x3/2 max pool, a 1x1 and a 3x3 convolution, a 3x3/2 max pool, nine
Inception modules (3a-b, 4a-e, 5a-b) with 3x3/2 max pools after 3b and 4e, a global average
pool, dropout and the classifier. Each Inception module (Fig. 2b) concatenates four parallel
branches: a 1x1 convolution; a 1x1 reduction then a 3x3; a 1x1 reduction then a 5x5; a 3x3/1
max pool then a 1x1 projection. Its widths are Table 1's columns (`INCEPTIONS`).

Deliberate deviations, all torchvision's, so that its weights import exactly (6,624,904
parameters at 1000 classes, 1,498 M multiply-accumulates at 224x224: the convolutions' and
the classifier's, `zoo.summary`, equal to fvcore's count and to torchvision's published 1.498
GFLOPS):
- every convolution is torchvision's `BasicConv2d`: no bias, BatchNorm with eps 1e-3, ReLU
  (the paper's network predates batch norm);
- the "5x5" branch convolves 3x3 (torchvision issue #906, kept for its weights);
- the max pools round their output size up (`ceil_mode=True`), the 4e pool is 2x2/2 (the
  paper's 3x3/2 with 'same' padding gives the same 7x7 at 224x224), and there is no local
  response normalisation after the stem;
- the two auxiliary classifiers are left out (`aux_logits=False`, what torchvision returns
  for its pretrained weights and in eval mode): their weights are training aids only;
- dropout 0.2 before the classifier (torchvision's; the paper's 0.4);
- `transform_input`: torchvision's pretrained weights (ported from TensorFlow) expect
  channels scaled as (x - 0.5) / 0.5; with it set, ImageNet-normalised inputs are mapped so,
  exactly as torchvision's `transform_input=True` (`zoo import-torchvision googlenet` sets it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import analytic
from zoo.analytic import Counts, Shape
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import GlobalAvgPool, MaxPool, batch_norm, check_rate, explicit_padding
from zoo.ops import Conv, initializers
from zoo.registry import register

PAPER = "Szegedy et al. 2014, Going Deeper with Convolutions, Table 1 (torchvision layout)"
# torchvision's `_transform_input`: ImageNet's per-channel mean and std, mapped to 0.5 and 0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5 (a 3x3 here), pool proj.
INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
# The max pool after each of these Inception modules: (name, window).
POOLS_AFTER = {"inception3b": ("maxpool3", 3), "inception4e": ("maxpool4", 2)}
truncated_normal = initializers.normal(0.01)  # torchvision's trunc_normal_(std=0.01, a=-2, b=2)


def transform_input(x: jax.Array) -> jax.Array:
    """torchvision's `GoogLeNet._transform_input`: ImageNet-normalised NHWC images as the
    pretrained weights want them, x * (std / 0.5) + (mean - 0.5) / 0.5 per channel."""
    scale = jnp.asarray([s / 0.5 for s in IMAGENET_STD], x.dtype)
    shift = jnp.asarray([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], x.dtype)
    return x * scale + shift


class BasicConv2d(nn.Module):
    """torchvision's `BasicConv2d`: a convolution without bias, BatchNorm (eps 1e-3), ReLU."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv(
            self.features,
            (self.kernel, self.kernel),
            self.stride,
            explicit_padding(self.padding),
            use_bias=False,
            kernel_init=truncated_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        return batch_norm(train, self.dtype, self.param_dtype, "bn", relu=True, epsilon=1e-3)(x)


class Inception(nn.Module):
    """Fig. 2b: four parallel branches on the same input, concatenated along the channels.

    Attributes:
      widths: Table 1's #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5 and pool proj.
    """

    widths: tuple[int, int, int, int, int, int]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # The concatenation's row follows the branches' rows in the analytic summary.
    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        one, _, three, _, five, pool = self.widths
        return analytic.concatenation(input_shape, one + three + five + pool)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        one, three_reduce, three, five_reduce, five, pool = self.widths

        def conv(features: int, kernel: int, name: str) -> BasicConv2d:
            dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
            return BasicConv2d(features, kernel, padding=kernel // 2, name=name, **dtypes)

        branches = [
            conv(one, 1, "branch1")(x, train),
            conv(three, 3, "branch2_3x3")(conv(three_reduce, 1, "branch2_1x1")(x, train), train),
            conv(five, 3, "branch3_3x3")(conv(five_reduce, 1, "branch3_1x1")(x, train), train),
            conv(pool, 1, "branch4_1x1")(MaxPool(3, 1, 1, name="branch4_pool")(x), train),
        ]
        return jnp.concatenate(branches, axis=-1)


class GoogLeNet(ImageModel):
    """Table 1's network in torchvision's layout (see the module docstring).

    Module names are torchvision's: `num_classes=0` returns the global average pool's 1024
    features (before the dropout).

    Attributes:
      dropout_rate: dropout before the classifier (in training).
      transform_input: map ImageNet-normalised inputs to (x - 0.5) / 0.5 per channel first, as
        torchvision's `transform_input=True` does for its pretrained weights.
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    dropout_rate: float = 0.2
    transform_input: bool = False

    head_name: ClassVar[str] = "fc"
    head_kernel_init: ClassVar[Any] = truncated_normal

    def __post_init__(self) -> None:
        check_rate("GoogLeNet", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # The last map at each resolution; every BasicConv2d (its norm, with its ReLU fused)
        # and Inception module ends in ReLUs.
        return (
            Stage("conv1", "conv1/bn"),
            Stage("conv3", "conv3/bn"),
            Stage("inception3b", "inception3b"),
            Stage("inception4e", "inception4e"),
            Stage("inception5b", "inception5b"),
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        if self.transform_input:
            x = transform_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = BasicConv2d(64, 7, 2, 3, name="conv1", **dtypes)(x, train)
        x = MaxPool(3, 2, ceil_mode=True, name="maxpool1")(x)
        x = BasicConv2d(64, 1, name="conv2", **dtypes)(x, train)
        x = BasicConv2d(192, 3, padding=1, name="conv3", **dtypes)(x, train)
        x = MaxPool(3, 2, ceil_mode=True, name="maxpool2")(x)
        for name, widths in INCEPTIONS.items():
            x = Inception(widths, name=name, **dtypes)(x, train)
            if name in POOLS_AFTER:
                pool, window = POOLS_AFTER[name]
                x = MaxPool(window, 2, ceil_mode=True, name=pool)(x)
        x = GlobalAvgPool(name="avgpool")(x)
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return self.classify(x)


register(
    "googlenet",
    GoogLeNet,
    num_classes=1000,
    in_channels=3,
    reference_params=6_624_904,
    paper=PAPER,
    description="GoogLeNet (Inception v1), torchvision's: batch norm, no auxiliary heads",
)

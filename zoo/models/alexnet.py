"""AlexNet in the three layouts people mean by the name.

A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NeurIPS 2012, Fig. 2 and Sec. 3. Five convolutions (11/4, 5, 3, 3, 3), max
pooling 3/2 after conv1, conv2 and conv5, two dropout-0.5 fully connected layers of 4096.

| name                  | widths                   | norm          | groups        | params     |
|-----------------------|--------------------------|---------------|---------------|------------|
| `alexnet`             | 96-256-384-384-256       | batch norm    | none          | 62,378,696 |
| `alexnet_2012`        | 96-256-384-384-256       | LRN (Sec 3.3) | conv2, 4, 5   | 60,965,224 |
| `alexnet_torchvision` | 64-192-384-256-256       | none          | none          | 61,100,840 |

- `alexnet` is the lecture's version (CMU 10-315): "the network changes since LeNet" are ReLU,
  max pooling, batch norm after conv1 and conv2, and dropout. The slide gives no padding; we use
  the paper's (conv1 2 on a 224 input, conv2 2, conv3-5 1), which makes the last map 6x6x256
  (9,216 features). conv1 and conv2 have no bias because the batch norm after them shifts anyway:
  params = 34,848 + 192 + 614,400 + 512 + 885,120 + 1,327,488 + 884,992 + 37,752,832
  + 16,781,312 + 4,097,000 = 62,378,696.
- `alexnet_2012` is the paper's: conv2, conv4 and conv5 split in two groups (the two GPUs),
  local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after conv1 and conv2. Its input
  is 227x227 with no conv1 padding: the paper's "224" does not give its own 55x55 first map.
- `alexnet_torchvision` is torchvision's layout (One weird trick, Krizhevsky 2014), with its
  adaptive average pool to 6x6, so that torchvision weights import exactly; any input >= 63x63.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.analytic import Counts, Shape
from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    AdaptiveAvgPool,
    Flatten,
    MaxPool,
    batch_norm,
    check_choice,
    check_positive,
    check_rate,
    explicit_padding,
    window_sum,
)
from zoo.ops import Conv, Dense
from zoo.registry import register

PAPER = (
    "Krizhevsky, Sutskever, Hinton 2012, ImageNet Classification with Deep Convolutional "
    "Neural Networks, Fig. 2"
)
KERNELS = (11, 5, 3, 3, 3)
STRIDES = (4, 1, 1, 1, 1)
NORMS = ("batchnorm", "lrn", "none")


class LocalResponseNorm(nn.Module):
    """Sec. 3.3: b = a / (k + alpha * sum of a^2 over n neighbouring channels)^beta.

    The paper's alpha multiplies the plain sum (PyTorch's `LocalResponseNorm` divides it by n).
    """

    size: int = 5
    k: float = 2.0
    alpha: float = 1e-4
    beta: float = 0.75

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return Counts("lrn", tuple(input_shape))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        half = self.size // 2
        padding = ((0, 0), (0, 0), (0, 0), (half, self.size - 1 - half))
        squares = window_sum(jnp.square(x), (1, 1, 1, self.size), (1, 1, 1, 1), padding)
        return x / (self.k + self.alpha * squares.astype(x.dtype)) ** self.beta


class AlexNet(ImageModel):
    """Five convolutions, three max pools, three fully connected layers (see the module doc).

    Attributes:
      widths: output channels of conv1..conv5.
      groups: feature groups of conv1..conv5 (2 = the paper's two-GPU split).
      norm: after conv1 and conv2: "batchnorm", "lrn" (the paper's) or "none".
      conv1_padding: zero padding of conv1 (2 for 224 inputs, 0 for 227).
      adaptive_pool: average-pool the last map to 6x6 like torchvision, so any input size works.
      hidden: width of fc6 and fc7.
      dropout_rate: dropout before fc6 and fc7.
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    widths: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
    groups: tuple[int, int, int, int, int] = (1, 1, 1, 1, 1)
    norm: str = "batchnorm"
    conv1_padding: int = 2
    adaptive_pool: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5

    head_name: ClassVar[str] = "fc8"

    def __post_init__(self) -> None:
        check_positive("AlexNet", widths=self.widths, groups=self.groups, hidden=self.hidden)
        check_choice("AlexNet", "norm", self.norm, NORMS)
        if len(self.widths) != 5 or len(self.groups) != 5:
            raise InvalidValueError(
                f"AlexNet: widths and groups need 5 entries, got {self.widths!r} "
                f"and {self.groups!r}"
            )
        check_rate("AlexNet", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @property
    def fixed_input_size(self) -> bool:  # type: ignore[override]
        return not self.adaptive_pool

    @property
    def paddings(self) -> tuple[int, ...]:
        return (self.conv1_padding, 2, 1, 1, 1)

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # The pools come after relu (and norm) in every layout; conv3 and conv4 have no module
        # after them before their relu.
        return (
            Stage("pool1", "pool1"),
            Stage("pool2", "pool2"),
            Stage("conv3", "conv3", nn.relu),
            Stage("conv4", "conv4", nn.relu),
            Stage("pool5", "pool5"),
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        for i in range(5):
            n = i + 1
            x = Conv(
                self.widths[i],
                (KERNELS[i],) * 2,
                STRIDES[i],
                explicit_padding(self.paddings[i]),
                feature_group_count=self.groups[i],
                use_bias=not (n <= 2 and self.norm == "batchnorm"),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"conv{n}",
            )(x)
            if n <= 2 and self.norm == "batchnorm":
                x = batch_norm(train, self.dtype, self.param_dtype, f"bn{n}")(x)
            x = nn.relu(x)
            if n <= 2 and self.norm == "lrn":
                x = LocalResponseNorm(name=f"lrn{n}")(x)
            if n in (1, 2, 5):
                x = MaxPool(3, 2, name=f"pool{n}")(x)
        if self.adaptive_pool:
            x = AdaptiveAvgPool((6, 6), name="avgpool")(x)
        x = Flatten(name="flatten")(x)
        for name in ("fc6", "fc7"):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(
                Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
            )
        return self.classify(x)


_IMAGENET = {"num_classes": 1000, "in_channels": 3}

register(
    "alexnet",
    AlexNet,
    **_IMAGENET,
    reference_params=62_378_696,
    paper=f"{PAPER}; with batch norm as in the CMU 10-315 lecture",
    description="AlexNet as the lecture lists it: batch norm, ReLU, max pool, dropout",
)
register(
    "alexnet_2012",
    AlexNet,
    **_IMAGENET,
    input_size=(227, 227),
    conv1_padding=0,
    norm="lrn",
    groups=(1, 2, 1, 2, 2),
    reference_params=60_965_224,
    paper=PAPER,
    description="AlexNet as published: two groups on conv2/4/5, local response norm",
)
register(
    "alexnet_torchvision",
    AlexNet,
    **_IMAGENET,
    widths=(64, 192, 384, 256, 256),
    norm="none",
    adaptive_pool=True,
    reference_params=61_100_840,
    paper="torchvision.models.alexnet (Krizhevsky 2014, One weird trick), for weight import",
    description="AlexNet in torchvision's layout (64-192-384-256-256), adaptive 6x6 pool",
)

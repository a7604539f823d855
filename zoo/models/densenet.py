"""DenseNet-BC, as torchvision builds it.

G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected Convolutional
Networks", CVPR 2017 (arXiv:1608.06993), Table 1. A 7x7/2 convolution and a 3x3/2 max pool,
then four dense blocks joined by transitions, a final BatchNorm and ReLU, a global average
pool and the classifier. Every dense layer is pre-activation (Sec. 3, "DenseNet-B"):
BN-ReLU-conv 1x1 to `bn_size` x k channels, BN-ReLU-conv 3x3 to k (the growth rate), and its
k new maps are concatenated to its input, so layer l of a block reads the block's input and
every earlier layer's output. A transition ("DenseNet-C", compression 0.5) is BN-ReLU-conv
1x1 to half the channels and a 2x2/2 average pool.

torchvision's layout, so that its weights import exactly (the module names are its own);
`memory_efficient` (gradient checkpointing) changes no output and is not a setting here.
Initialisation as torchvision's: He normal (fan in) convolutions, zero classifier bias.

| name        | k  | stem | layers per block | params (1000 classes) | MACs at 224x224 |
|-------------|----|------|------------------|-----------------------|-----------------|
| densenet121 | 32 | 64   | 6, 12, 24, 16    | 7,978,856             | 2,834,161,664   |
| densenet169 | 32 | 64   | 6, 12, 32, 32    | 14,149,480            | 3,359,843,328   |
| densenet201 | 32 | 64   | 6, 12, 48, 32    | 20,013,928            | 4,291,365,888   |
| densenet161 | 48 | 96   | 6, 12, 36, 24    | 28,681,000            | 7,727,907,072   |

MACs are the convolutions' and the classifier's (`zoo.summary`), equal to fvcore's count of
torchvision's models and to torchvision's published GFLOPS.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import analytic
from zoo.analytic import Counts, Shape
from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    AvgPool,
    GlobalAvgPool,
    MaxPool,
    batch_norm,
    check_positive,
    check_rate,
    explicit_padding,
)
from zoo.ops import Conv, initializers
from zoo.registry import register

PAPER = "Huang et al. 2017, Densely Connected Convolutional Networks, Table 1 (DenseNet-BC)"
he_normal = initializers.variance_scaling(2.0, "fan_in", "normal")  # torch's kaiming_normal_
# torch's default Linear initialisation (kaiming_uniform_ with a = sqrt(5)).
torch_linear = initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(features: int, kernel: int, name: str, dtype: Any, param_dtype: Any) -> nn.Conv:
    return Conv(
        features,
        (kernel, kernel),
        1,
        explicit_padding(kernel // 2),
        use_bias=False,
        kernel_init=he_normal,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 to `bn_size` x `growth_rate`, BN-ReLU-conv3x3 to `growth_rate`; the new
    maps concatenated after the input's channels (its output is the next layer's input)."""

    growth_rate: int
    bn_size: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # The concatenation's row follows the layer's convolutions in the analytic summary.
    describes_after_children: ClassVar[bool] = True

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        return analytic.concatenation(input_shape, input_shape[-1] + self.growth_rate)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dtypes = (self.dtype, self.param_dtype)
        y = batch_norm(train, *dtypes, "norm1", relu=True)(x)
        y = _conv(self.bn_size * self.growth_rate, 1, "conv1", *dtypes)(y)
        y = batch_norm(train, *dtypes, "norm2", relu=True)(y)
        y = _conv(self.growth_rate, 3, "conv2", *dtypes)(y)
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to `features`, then a 2x2/2 average pool (DenseNet-C's compression)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = batch_norm(train, self.dtype, self.param_dtype, "norm", relu=True)(x)
        x = _conv(self.features, 1, "conv", self.dtype, self.param_dtype)(x)
        return AvgPool(2, 2, name="pool")(x)


class DenseNet(ImageModel):
    """Table 1's DenseNet-BC in torchvision's layout (see the module docstring).

    `num_classes=0` returns the global average pool of relu(norm5): 1024 features for
    densenet121.

    Attributes:
      growth_rate: k, the channels each dense layer adds.
      block_config: dense layers in each block.
      num_init_features: channels of the stem convolution.
      bn_size: a dense layer's 1x1 convolution gives bn_size x k channels.
      dropout_rate: dropout on each dense layer's new maps in training (torchvision's
        `drop_rate`; 0 in its models).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    dropout_rate: float = 0.0

    head_name: ClassVar[str] = "classifier"
    head_kernel_init: ClassVar[Any] = torch_linear

    def __post_init__(self) -> None:
        check_positive(
            "DenseNet",
            growth_rate=self.growth_rate,
            block_config=self.block_config,
            num_init_features=self.num_init_features,
            bn_size=self.bn_size,
        )
        if not isinstance(self.block_config, tuple):
            raise InvalidValueError(
                f"DenseNet: block_config must be a tuple, got {self.block_config!r}"
            )
        check_rate("DenseNet", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # A block's output is its last layer's concatenation (pre-activation: the transition
        # after it normalises it); norm0 and norm5 end in their ReLUs.
        return (
            Stage("norm0", "norm0"),
            *(
                Stage(f"denseblock{i}", f"denseblock{i}/denselayer{layers}")
                for i, layers in enumerate(self.block_config[:-1], start=1)
            ),
            Stage("norm5", "norm5"),
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = Conv(
            self.num_init_features,
            (7, 7),
            2,
            explicit_padding(3),
            use_bias=False,
            kernel_init=he_normal,
            name="conv0",
            **dtypes,
        )(x)
        x = batch_norm(train, self.dtype, self.param_dtype, "norm0", relu=True)(x)
        x = MaxPool(3, 2, 1, name="pool0")(x)
        features = self.num_init_features
        for i, layers in enumerate(self.block_config, start=1):
            x = DenseBlock(
                layers,
                self.growth_rate,
                self.bn_size,
                self.dropout_rate,
                name=f"denseblock{i}",
                **dtypes,
            )(x, train)
            features += layers * self.growth_rate
            if i < len(self.block_config):
                features //= 2
                x = Transition(features, name=f"transition{i}", **dtypes)(x, train)
        # torchvision's name for the final norm, whatever the number of blocks.
        x = batch_norm(train, self.dtype, self.param_dtype, "norm5", relu=True)(x)
        return self.classify(GlobalAvgPool(name="pool")(x))


class DenseBlock(nn.Module):
    """`layers` dense layers, each reading the concatenation of all before it."""

    layers: int
    growth_rate: int
    bn_size: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for j in range(1, self.layers + 1):
            x = DenseLayer(
                self.growth_rate,
                self.bn_size,
                self.dropout_rate,
                self.dtype,
                self.param_dtype,
                name=f"denselayer{j}",
            )(x, train)
        return x


# name: (growth rate, stem features, layers per block, torchvision's params at 1000 classes)
VARIANTS = {
    "densenet121": (32, 64, (6, 12, 24, 16), 7_978_856),
    "densenet169": (32, 64, (6, 12, 32, 32), 14_149_480),
    "densenet201": (32, 64, (6, 12, 48, 32), 20_013_928),
    "densenet161": (48, 96, (6, 12, 36, 24), 28_681_000),
}

for _name, (_growth, _stem, _blocks, _params) in VARIANTS.items():
    register(
        _name,
        DenseNet,
        growth_rate=_growth,
        num_init_features=_stem,
        block_config=_blocks,
        num_classes=1000,
        in_channels=3,
        reference_params=_params,
        paper=PAPER,
        description=f"DenseNet-BC-{_name[8:]}, k={_growth}, dense blocks {_blocks}",
    )

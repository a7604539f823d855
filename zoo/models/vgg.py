"""VGG: stacks of 3x3 convolutions, as torchvision builds them.

K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (arXiv:1409.1556), Table 1, configurations A, B, D and E: five stages
of 3x3 convolutions (stride 1, padding 1, ReLU), each closed by a 2x2 max pool of stride 2,
then three fully connected layers (4096, 4096, 1000) with dropout 0.5 after the first two.

Deliberate deviations, all torchvision's, so that its weights import exactly:
- an adaptive average pool to 7x7 before fc6 (`AdaptiveAvgPool`, PyTorch's bins), so any input
  of at least 32x32 works; at 224x224 it is the identity, as in the paper;
- the `_bn` variants put a BatchNorm (eps 1e-5, momentum 0.1) between each convolution and its
  ReLU, keeping the convolution's bias (the paper has no batch norm; Ioffe & Szegedy came later);
- configuration A without the paper's local response normalisation (A-LRN), and C (1x1
  convolutions) not at all: torchvision has neither;
- initialisation: He normal (fan out) convolutions, zero biases, N(0, 0.01) dense weights.

| name      | Table 1 | convolutions per stage | params (1000 classes) | MACs at 224x224 |
|-----------|---------|------------------------|-----------------------|-----------------|
| vgg11     | A       | 1, 1, 2, 2, 2          | 132,863,336           | 7,609,090,048   |
| vgg11_bn  | A + BN  | 1, 1, 2, 2, 2          | 132,868,840           | 7,609,090,048   |
| vgg13     | B       | 2, 2, 2, 2, 2          | 133,047,848           | 11,308,466,176  |
| vgg13_bn  | B + BN  | 2, 2, 2, 2, 2          | 133,053,736           | 11,308,466,176  |
| vgg16     | D       | 2, 2, 3, 3, 3          | 138,357,544           | 15,470,264,320  |
| vgg16_bn  | D + BN  | 2, 2, 3, 3, 3          | 138,365,992           | 15,470,264,320  |
| vgg19     | E       | 2, 2, 4, 4, 4          | 143,667,240           | 19,632,062,464  |
| vgg19_bn  | E + BN  | 2, 2, 4, 4, 4          | 143,678,248           | 19,632,062,464  |

MACs are the convolutions' and dense layers' (`zoo.summary`), equal to fvcore's count of
torchvision's models and to torchvision's published GFLOPS.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax

from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    AdaptiveAvgPool,
    Flatten,
    MaxPool,
    batch_norm,
    check_positive,
    check_rate,
    explicit_padding,
)
from zoo.ops import Conv, Dense, initializers
from zoo.registry import register

PAPER = (
    "Simonyan & Zisserman 2014, Very Deep Convolutional Networks for Large-Scale Image "
    "Recognition, Table 1"
)
he_normal = initializers.variance_scaling(2.0, "fan_out", "normal")

# Table 1's configurations: the output channels of each stage's convolutions.
CONFIGURATIONS = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


class VGG(ImageModel):
    """Table 1's convolution stages, each ending in a 2x2/2 max pool; an adaptive average pool
    to `pool_size`; fc6 and fc7 (ReLU, dropout) and the classifier fc8.

    Module names follow the paper: convS_I (and bnS_I) is convolution I of stage S, poolS
    closes stage S. `num_classes=0` returns fc7's output after its ReLU (the classic VGG
    transfer feature, 4096 wide).

    Attributes:
      stages: output channels of each stage's 3x3 convolutions (`CONFIGURATIONS`).
      batch_norm: a BatchNorm between each convolution and its ReLU (torchvision's `_bn`).
      pool_size: the (height, width) the adaptive average pool gives fc6 (7x7 in torchvision).
      hidden: width of fc6 and fc7.
      dropout_rate: dropout after fc6 and fc7 (in training).
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    stages: tuple[tuple[int, ...], ...] = CONFIGURATIONS["D"]
    batch_norm: bool = False
    pool_size: tuple[int, int] = (7, 7)
    hidden: int = 4096
    dropout_rate: float = 0.5

    head_name: ClassVar[str] = "fc8"
    head_kernel_init: ClassVar[Any] = initializers.normal(0.01)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple | list) or not self.stages:
            raise InvalidValueError(
                f"VGG: stages must be a non-empty tuple of tuples, got {self.stages!r}"
            )
        for i, widths in enumerate(self.stages):
            check_positive("VGG", **{f"stages[{i}]": widths})
        # JSON (a config file, --model-arg) gives lists; the module is hashed by its fields.
        object.__setattr__(self, "stages", tuple(tuple(widths) for widths in self.stages))
        check_positive("VGG", pool_size=self.pool_size, hidden=self.hidden)
        if len(self.pool_size) != 2:
            raise InvalidValueError(f"VGG: pool_size must be (height, width), got {self.pool_size}")
        check_rate("VGG", "dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # Each stage's pool reads its last convolution's ReLU: its output is the stage's map.
        return tuple(Stage(f"pool{s}", f"pool{s}") for s in range(1, len(self.stages) + 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for s, widths in enumerate(self.stages, start=1):
            for i, width in enumerate(widths, start=1):
                conv = Conv(
                    width,
                    (3, 3),
                    1,
                    explicit_padding(1),
                    kernel_init=he_normal,
                    name=f"conv{s}_{i}",
                    **dtypes,
                )
                x = conv(x)
                if self.batch_norm:
                    norm = batch_norm(train, self.dtype, self.param_dtype, f"bn{s}_{i}", relu=True)
                    x = norm(x)
                else:
                    x = nn.relu(x)
            x = MaxPool(2, 2, name=f"pool{s}")(x)
        x = Flatten(name="flatten")(AdaptiveAvgPool(self.pool_size, name="avgpool")(x))
        dense = {"kernel_init": initializers.normal(0.01), **dtypes}
        x = nn.relu(Dense(self.hidden, name="fc6", **dense)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(Dense(self.hidden, name="fc7", **dense)(x))
        if not self.num_classes:
            return x
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return self.classify(x)


# name: (Table 1 configuration, batch norm, torchvision's parameter count at 1000 classes)
VARIANTS = {
    "vgg11": ("A", False, 132_863_336),
    "vgg11_bn": ("A", True, 132_868_840),
    "vgg13": ("B", False, 133_047_848),
    "vgg13_bn": ("B", True, 133_053_736),
    "vgg16": ("D", False, 138_357_544),
    "vgg16_bn": ("D", True, 138_365_992),
    "vgg19": ("E", False, 143_667_240),
    "vgg19_bn": ("E", True, 143_678_248),
}

for _name, (_config, _bn, _params) in VARIANTS.items():
    _depth = sum(map(len, CONFIGURATIONS[_config])) + 3
    register(
        _name,
        VGG,
        stages=CONFIGURATIONS[_config],
        batch_norm=_bn,
        num_classes=1000,
        in_channels=3,
        reference_params=_params,
        paper=f"{PAPER} ({_config}){'; batch norm as in torchvision' if _bn else ''}",
        description=f"VGG-{_depth} (configuration {_config}){' with batch norm' if _bn else ''}",
    )

"""LeNet-5, as the lecture lists it and as LeCun et al. published it.

- `lenet5`: the lecture's layer list (CMU 10-315): 1x32x32 input; conv 6 k5 tanh, average pool 2;
  conv 16 k5 tanh, average pool 2; FC 120 tanh; FC 84 tanh; FC 10. 61,706 parameters
  (156 + 2,416 + 48,120 + 10,164 + 850).
- `lenet5_1998`: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to
  Document Recognition", Proc. IEEE 1998, Sec. II-B and Fig. 2: C3 sees only the subsets of S2
  maps in Table I; S2 and S4 multiply each 2x2 sum by a trainable coefficient and add a trainable
  bias; every unit squashes with f(a) = 1.7159 tanh(2a/3) (Appendix A); C5 is a 5x5 convolution;
  the output layer is Euclidean RBF units with fixed +-1 centres. 60,000 trainable parameters.
  Deliberate deviations: the RBF centres are fixed pseudo-random +-1 codes (the paper's are
  stylised 7x12 character bitmaps, not published as data); logits are the negated RBF distances
  over sqrt(84), trained with softmax cross-entropy (close to the paper's MAP criterion, Eq. 9);
  C3's initial scale counts all of a unit's input maps; inputs are
  standardised rather than mapped to [-0.1, 1.175]; initialisation is Flax's LeCun normal rather
  than uniform +-2.4 / fan-in.
Layer names follow the paper (c1, s2, c3, s4, c5, f6, output) so checkpoint keys read like Fig. 2.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo import analytic, formulas
from zoo.analytic import Counts, Shape
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import AvgPool, Flatten, window_sum
from zoo.ops import Conv, Dense, conv_general_dilated, initializers
from zoo.registry import register

PAPER_1998 = (
    "LeCun et al. 1998, Gradient-Based Learning Applied to Document Recognition, Fig. 2, Table I"
)

# Table I of the paper: the S2 feature maps each C3 feature map combines.
C3_CONNECTIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (4, 5, 0),
    (5, 0, 1),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (3, 4, 5, 0),
    (4, 5, 0, 1),
    (5, 0, 1, 2),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class LeNet5(ImageModel):
    """LeNet-5 exactly as the lecture lists it (tanh, average pooling, fully connected C3)."""

    num_classes: int = 10
    input_size: tuple[int, int] = (32, 32)

    fixed_input_size: ClassVar[bool] = True
    head_name: ClassVar[str] = "output"

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # tanh follows each convolution; the average pools' outputs are final.
        return (
            Stage("c1", "c1", nn.tanh),
            Stage("s2", "s2"),
            Stage("c3", "c3", nn.tanh),
            Stage("s4", "s4"),
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)

        def conv(features: int, name: str) -> Conv:
            dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
            return Conv(features, (5, 5), padding="VALID", name=name, **dtypes)

        x = AvgPool(2, 2, name="s2")(jnp.tanh(conv(6, "c1")(x)))
        x = AvgPool(2, 2, name="s4")(jnp.tanh(conv(16, "c3")(x)))
        x = Flatten(name="flatten")(x)
        x = jnp.tanh(Dense(120, dtype=self.dtype, param_dtype=self.param_dtype, name="c5")(x))
        x = jnp.tanh(Dense(84, dtype=self.dtype, param_dtype=self.param_dtype, name="f6")(x))
        return self.classify(x)


def squash(a: jax.Array) -> jax.Array:
    """The paper's sigmoid, f(a) = A tanh(S a) with A = 1.7159 and S = 2/3 (Appendix A)."""
    return 1.7159 * jnp.tanh(2.0 * a / 3.0)


class Subsampling(nn.Module):
    """S2/S4: each 2x2 sum times a trainable coefficient plus a trainable bias, per map."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        pooled = analytic.pool(input_shape, 2, 2, kind="subsample")
        return dataclasses.replace(pooled, params=2 * input_shape[-1])

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        # 1/4 starts each map as the 2x2 average: the sum's scale would saturate the squash.
        coefficient = self.param(
            "coefficient", nn.initializers.constant(0.25), (channels,), self.param_dtype
        )
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        total = window_sum(x, (1, 2, 2, 1), (1, 2, 2, 1)).astype(self.dtype)
        return total * coefficient.astype(self.dtype) + bias.astype(self.dtype)


class PartialConv(nn.Module):
    """A convolution whose output map j sees only the input maps `connections[j]` (Table I).

    Only the connected 5x5 kernels are parameters: `kernel` stacks them, (K, K, connections),
    and they are scattered into a dense HWIO kernel with zeros elsewhere, so one ordinary
    convolution computes the layer and the zeros get no gradient.
    """

    connections: tuple[tuple[int, ...], ...]
    kernel_size: int = 5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        # One K x K kernel per connection: a convolution of the connected maps, one per group.
        h, w, _ = analytic.spatial(input_shape, "partial_conv")
        k, fan_in = self.kernel_size, sum(map(len, self.connections))
        oh, ow = (formulas.conv_output_size(n, k) for n in (h, w))
        return Counts(
            "partial_conv",
            (oh, ow, len(self.connections)),
            formulas.conv_params(fan_in, fan_in, k, groups=fan_in, bias=False)
            + len(self.connections),
            formulas.conv_macs(oh, ow, fan_in, fan_in, k, groups=fan_in),
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs = np.array([i for c in self.connections for i in c])
        outputs = np.array([j for j, c in enumerate(self.connections) for _ in c])
        k, features = self.kernel_size, len(self.connections)
        # A C3 unit's fan-in is K * K times its number of input maps (3, 4 or 6), not K * K.
        maps_in = np.array([len(self.connections[j]) for j in outputs])

        def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
            per_map = initializers.lecun_normal(in_axis=(0, 1), out_axis=())(key, shape, dtype)
            return per_map / np.sqrt(maps_in).astype(dtype)

        kernel = self.param("kernel", init, (k, k, len(inputs)), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        dense = jnp.zeros((k, k, x.shape[-1], features), kernel.dtype)
        dense = dense.at[:, :, inputs, outputs].set(kernel)
        y = conv_general_dilated(
            x.astype(self.dtype),
            dense.astype(self.dtype),
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class LeNet5_1998(ImageModel):
    """LeNet-5 as published in 1998: partial C3, trainable subsampling, RBF output."""

    num_classes: int = 10
    input_size: tuple[int, int] = (32, 32)

    fixed_input_size: ClassVar[bool] = True
    head_name: ClassVar[str] = "output"

    @nn.nowrap
    def head(self) -> nn.Module:
        return RBFOutput(self.num_classes, name=self.head_name)

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # The paper squashes every layer's output, the subsampling layers' included.
        return tuple(Stage(name, name, squash) for name in ("c1", "s2", "c3", "s4"))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        x = squash(
            Conv(
                6,
                (5, 5),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="c1",
            )(x)
        )
        x = squash(Subsampling(self.dtype, self.param_dtype, name="s2")(x))
        x = squash(
            PartialConv(C3_CONNECTIONS, dtype=self.dtype, param_dtype=self.param_dtype, name="c3")(
                x
            )
        )
        x = squash(Subsampling(self.dtype, self.param_dtype, name="s4")(x))
        x = squash(
            Conv(
                120,
                (5, 5),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="c5",
            )(x)
        )
        x = Flatten(name="flatten")(x)
        x = squash(Dense(84, dtype=self.dtype, param_dtype=self.param_dtype, name="f6")(x))
        return self.classify(x)


class RBFOutput(nn.Module):
    """Euclidean RBF units, y_i = sum_j (x_j - w_ij)^2, with fixed centres; returns -y / sqrt(n)
    (Eq. 7), n the input width (84).

    Dividing by sqrt(n) is a fixed softmax temperature, a deliberate deviation: each of the 84
    units adds up to (1.7159 + 1)^2 to a distance, so the logits soon span hundreds and the
    softmax saturates, which stops training early (bench/README.md, "Presets").

    The centres are constants, not parameters (the paper keeps them fixed): a +-1 code per
    class drawn once from a fixed seed, so every instance of the model has the same ones.
    """

    num_classes: int

    @nn.nowrap
    def describe(self, input_shape: Shape) -> Counts:
        (width,) = input_shape
        return Counts("rbf", (self.num_classes,), macs=width * self.num_classes)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        centres = rbf_centres(self.num_classes, x.shape[-1])
        distance = jnp.sum((x[:, None, :] - jnp.asarray(centres, x.dtype)) ** 2, axis=-1)
        return -distance / np.sqrt(x.shape[-1])


def rbf_centres(num_classes: int, width: int) -> np.ndarray:
    return np.random.default_rng(1998).choice([-1.0, 1.0], size=(num_classes, width))


register(
    "lenet5",
    LeNet5,
    in_channels=1,
    reference_params=61_706,
    paper="LeNet-5 as listed in the CMU 10-315 lecture (after LeCun et al. 1998, Fig. 2)",
    description="LeNet-5, lecture layout: tanh, average pooling, 32x32x1",
)
register(
    "lenet5_1998",
    LeNet5_1998,
    in_channels=1,
    reference_params=60_000,
    paper=PAPER_1998,
    description="LeNet-5 as published: partial C3, trainable subsampling, RBF output",
)

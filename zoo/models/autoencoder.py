"""The lecture's convolutional autoencoder: images to a 2-D latent code (z1, z2) and back.

CMU 10-315 closes its image lecture with self-supervised learning: an encoder squeezes each MNIST
digit into two numbers, a decoder rebuilds the image from them, and the reconstruction error is
the only training signal. Plotting the test digits at their (z1, z2) shows the classes separate
without a label ever being used (`zoo plot latent`).

Encoder: two stride-2 3x3 convolutions (28 -> 14 -> 7), then a dense layer to `latent_dim`.
Decoder: the mirror image, a dense layer back to 7x7 maps and two stride-2 transposed
convolutions (7 -> 14 -> 28). The output is the reconstruction in the input's (standardised) units.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax

from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import Flatten, Reshape, check_positive
from zoo.ops import Conv, Dense, initializers
from zoo.registry import register


class ConvAutoencoder(ImageModel):
    """Conv encoder to a `latent_dim`-D code, transposed-conv decoder back to the image.

    `num_classes` is unused by the network (it has no classifier); it records the labels of the
    data set so that plots can colour the latent space by class.

    Attributes:
      widths: channels of the two encoder convolutions (the decoder mirrors them).
      latent_dim: size of the code; 2 is the lecture's plottable plane.
    """

    widths: tuple[int, int] = (16, 32)
    latent_dim: int = 2

    fixed_input_size: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive("ConvAutoencoder", widths=self.widths, latent_dim=self.latent_dim)
        if len(self.widths) != 2 or any(size % 4 for size in self.input_size):
            raise InvalidValueError(
                "ConvAutoencoder: widths needs 2 entries and input_size must be divisible by 4, "
                f"got widths={self.widths!r}, input_size={self.input_size!r}"
            )
        super().__post_init__()

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """The feature map between the encoder's convolutions and its dense layer."""
        h, w = self.input_size
        return (h // 4, w // 4, self.widths[1])

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # The encoder's maps; the decoder rebuilds the image and is no backbone.
        return (
            Stage("encoder_conv1", "encoder_conv1", nn.relu),
            Stage("encoder_conv2", "encoder_conv2", nn.relu),
        )

    def setup(self) -> None:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        kernel_init = initializers.lecun_normal()
        conv = {"kernel_size": (3, 3), "strides": 2, "kernel_init": kernel_init, **dtypes}
        self.encoder_conv1 = Conv(self.widths[0], padding=((1, 1), (1, 1)), **conv)
        self.encoder_conv2 = Conv(self.widths[1], padding=((1, 1), (1, 1)), **conv)
        self.encoder_flatten = Flatten()
        self.latent = Dense(self.latent_dim, **dtypes)
        self.decoder_dense = Dense(math.prod(self.code_shape), **dtypes)
        self.decoder_reshape = Reshape(self.code_shape)
        self.decoder_conv1 = nn.ConvTranspose(self.widths[0], padding="SAME", **conv)
        self.decoder_conv2 = nn.ConvTranspose(self.in_channels, padding="SAME", **conv)

    def encode(self, x: jax.Array) -> jax.Array:
        """Images (N, H, W, C) -> codes (N, latent_dim)."""
        self.check_input(x)
        x = nn.relu(self.encoder_conv1(x))
        x = nn.relu(self.encoder_conv2(x))
        return self.latent(self.encoder_flatten(x))

    def decode(self, z: jax.Array) -> jax.Array:
        """Codes (N, latent_dim) -> reconstructions (N, H, W, C)."""
        x = self.decoder_reshape(nn.relu(self.decoder_dense(z)))
        x = nn.relu(self.decoder_conv1(x))
        return self.decoder_conv2(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.decode(self.encode(x))


register(
    "conv_autoencoder",
    ConvAutoencoder,
    task="reconstruction",
    num_classes=10,
    in_channels=1,
    input_size=(28, 28),
    paper="Convolutional autoencoder with a 2-D latent space (CMU 10-315 lecture)",
    description="conv encoder to a 2-D latent (z1, z2), transposed-conv decoder (MNIST)",
)

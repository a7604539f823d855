"""Fully connected baselines: multinomial logistic regression and the multilayer perceptron.

The lecture's first image classifiers (CMU 10-315): logistic regression on MNIST pixels,
784 * 10 + 10 = 7,850 parameters, and a network with one hidden layer of two neurons, whose
2-D hidden representation can be plotted. Both are an `MLP`; logistic regression is the one with
no hidden layer.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel
from zoo.models.layers import Flatten, check_choice, check_positive
from zoo.ops import Dense
from zoo.registry import register

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}


class MLP(ImageModel):
    """Flatten, then `hidden` fully connected layers with `activation`, then a linear classifier.

    Attributes:
      hidden: widths of the hidden layers, input to output; () is logistic regression.
      activation: the hidden non-linearity: "relu", "tanh" or "sigmoid".
    """

    hidden: tuple[int, ...] = (2,)
    activation: str = "tanh"

    fixed_input_size: ClassVar[bool] = True
    head_name: ClassVar[str] = "classifier"

    def __post_init__(self) -> None:
        if self.hidden:
            check_positive("MLP", hidden=self.hidden)
        elif self.num_classes == 0:
            # Its "features" would be the flattened pixels: a model with nothing to train.
            raise InvalidValueError(
                "MLP: num_classes=0 needs a hidden layer, whose output is the features; "
                "logistic regression (hidden=()) has none"
            )
        check_choice("MLP", "activation", self.activation, tuple(ACTIVATIONS))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        x = Flatten(name="flatten")(x)
        for i, width in enumerate(self.hidden):
            x = ACTIVATIONS[self.activation](
                Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden{i}")(x)
            )
        return self.classify(x)


_MNIST = {"num_classes": 10, "in_channels": 1, "input_size": (28, 28)}

register(
    "logistic_regression",
    MLP,
    hidden=(),
    **_MNIST,
    reference_params=7_850,
    paper="Multinomial logistic regression on MNIST pixels (CMU 10-315 lecture)",
    description="softmax regression 784 -> 10",
)
register(
    "mlp",
    MLP,
    hidden=(2,),
    **_MNIST,
    paper="One hidden layer of two neurons, a 2-D hidden representation (CMU 10-315 lecture)",
    description="fully connected net, hidden widths configurable (default one layer of 2)",
)

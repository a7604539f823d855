"""The config every zoo image model shares, and its validation.

Flax modules are dataclasses: these fields are the model's whole config, so a model is rebuilt
from `zoo.create_model(name, **config)` and nothing else (the registry records exactly these).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo import analytic
from zoo.errors import InvalidValueError
from zoo.fields import FloatDtype, conform, field_hints
from zoo.models.layers import check_input, check_positive
from zoo.ops import Dense


@dataclasses.dataclass(frozen=True)
class Stage:
    """One feature stage of a model (see `zoo.features`); a model lists them in `feature_stages`.

    Attributes:
      name: the stage name users ask for ("stage3", "pool5", ...).
      module: the '/'-separated path of the submodule whose output the stage is.
      activation: the function the model applies to that output before the next layer, when
        it is a plain function call rather than a module; None when the output is final.
    """

    name: str
    module: str
    activation: Callable[[jax.Array], jax.Array] | None = None


class ImageModel(nn.Module):
    """Base config of a zoo network that maps NHWC images to `num_classes` outputs.

    `num_classes=0` makes the model headless (timm's convention): it returns the features its
    classifier would read, (N, C), and `zoo.models.heads.replace_head` puts a new head on.

    Attributes:
      num_classes: size of the output layer; 0 for no classifier (the model's features).
      in_channels: channels of the input images.
      input_size: (height, width) the network was designed for; a network with
        `fixed_input_size` accepts no other, the others use it for summaries only.
      dtype: the compute dtype (e.g. `jnp.bfloat16` for mixed precision).
      param_dtype: the dtype every layer stores its parameters in (float32 by default, also
        under a bfloat16 `dtype`); batch statistics stay float32.
    """

    num_classes: int = 10
    in_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    dtype: FloatDtype = jnp.float32
    param_dtype: FloatDtype = jnp.float32

    fixed_input_size: ClassVar[bool] = False
    # The module name of the classifier (None: the model has none); its checkpoint key.
    head_name: ClassVar[str | None] = None
    # The classifier's kernel initialiser, where the family's reference draws it otherwise than
    # Flax's `Dense` (LeCun normal); None: Flax's.
    head_kernel_init: ClassVar[Callable[..., jax.Array] | None] = None

    def __post_init__(self) -> None:
        model = type(self).__name__
        # Every field's type, from its annotation (`zoo.fields`; `create_model` checked them
        # already, a module built directly is checked here), then this class's ranges.
        for name, hint in field_hints(type(self)).items():
            if name not in ("parent", "name"):
                conform(model, name, getattr(self, name), hint)
        check_positive(model, in_channels=self.in_channels, input_size=self.input_size)
        if self.num_classes < 0:
            raise InvalidValueError(
                f"{model}: num_classes must be a non-negative integer (0: no classifier), "
                f"got {self.num_classes!r}"
            )
        super().__post_init__()

    @nn.nowrap
    def adapt_variables(self, variables: Any, source: nn.Module) -> Any:
        """`variables` of `source` (this model's family, maybe another input size) with every
        leaf whose shape follows the input size made to fit this model; unchanged here. A ViT
        resamples its position embeddings (what fine-tuning at another size needs)."""
        return variables

    @nn.nowrap
    def head(self) -> nn.Module:
        """The classifier on the features: a dense layer to `num_classes`, named `head_name`,
        its kernel drawn by `head_kernel_init`."""
        init = type(self).head_kernel_init  # read off the class: a plain function, not a method
        return Dense(
            self.num_classes,
            **({} if init is None else {"kernel_init": init}),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=self.head_name,
        )

    @nn.nowrap
    def classify(self, features: jax.Array) -> jax.Array:
        """`head()(features)`, or the features themselves for a headless model."""
        return self.head()(features) if self.num_classes else features

    def check_input(self, x: jax.Array) -> None:
        """Raises `ValueError` (at trace time, before any compile) for an input of wrong shape.

        Beyond the rank and channels (and the size, for `fixed_input_size`), the input must
        fit every layer: the analytic description at its shape (`zoo.analytic`) must hold, so
        a window larger than its input is this error, not a failure deep inside the network.
        A model that has a layer without an analytic rule (a layer of its own with parameters
        and no `describe`) gets the rank and channel checks only: the rule is needed by
        `zoo.summary`, not by the forward pass.
        """
        model = type(self).__name__
        check_input(
            model, x, (*self.input_size, self.in_channels), fixed_size=self.fixed_input_size
        )
        try:
            analytic.describe(self, x.shape[1:])
        except analytic.NoAnalyticRuleError:
            return
        except InvalidValueError as error:
            side = analytic.smallest_square_input(self, x.shape[1:])
            raise InvalidValueError(
                f"{model} expects NHWC images of shape (batch, height, width, {self.in_channels})"
                f" with height and width at least {side}, got shape {x.shape} ({error})"
            ) from None

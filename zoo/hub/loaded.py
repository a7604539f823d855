"""`LoadedModel`: a restored checkpoint, ready to classify raw images."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidValueError
from zoo.preprocessing import Preprocessing, check_raw


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """A zoo model with restored variables and the preprocessing it was trained with.

    Attributes:
      name: the registry name.
      model_name: the zoo model (`module` is `zoo.create_model(model_name, **config)`).
      module: the rebuilt Flax module.
      variables: the restored {'params': ..., maybe 'batch_stats': ...}.
      meta: the step's full metadata record.
      step: the training step.
      path: the step folder it was loaded from; None for a model trained with `save=False`.
      source: "user" (a registry of one's own), "shipped" (the read-only models inside the
        package; see `zoo.hub.api` for the lookup order) or "unsaved" (trained with
        `save=False`, never saved).
      train_state: the training state restored with it (`load(..., train_state=...)`), or None.
      preprocessing: raw images -> model inputs, from `meta["preprocessing"]`; None if the
        saver recorded none (then only `apply` works).
    """

    name: str
    model_name: str
    module: nn.Module
    variables: dict[str, Any] = dataclasses.field(repr=False)
    meta: dict[str, Any] = dataclasses.field(repr=False)
    step: int
    path: Path | None
    source: str
    train_state: Any = dataclasses.field(default=None, repr=False)
    preprocessing: Preprocessing | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        record = self.meta.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(record) if record is not None else None
        # One jitted function per instance: compiled once per input shape, then reused.
        self._apply = jax.jit(self._forward)
        self._logits = jax.jit(self._forward_raw)

    def apply(self, inputs: np.ndarray | jax.Array) -> jax.Array:
        """The model's output for already-preprocessed inputs (N, H, W, C), in inference mode."""
        return self._apply(self.variables, inputs)

    def logits(self, raw_images: np.ndarray | jax.Array) -> jax.Array:
        """Logits for raw uint8 images (N, H, W[, C]) of the training data set's shape.

        Images that are not uint8 (floats, negative values) are refused, as `zoo predict` and
        `zoo.training.arrays` refuse them, and so is an empty batch.
        """
        if self.preprocessing is None:
            raise InvalidValueError(
                f"{self.name} step {self.step} was saved without "
                "meta['preprocessing']; call .apply on preprocessed inputs"
            )
        images = raw_images if isinstance(raw_images, jax.Array) else np.asarray(raw_images)
        if images.ndim >= 1 and images.shape[0] == 0:
            raise InvalidValueError(
                f"no images to classify: the batch is empty, shape {images.shape}"
            )
        check_raw(images.dtype, "raw images")  # Before jit would make an int64 an int32.
        return self._logits(self.variables, images)

    def predict(self, raw_images: np.ndarray | jax.Array) -> np.ndarray:
        """Class ids (N,) for raw uint8 images (N, H, W[, C])."""
        return np.asarray(jnp.argmax(self.logits(raw_images), axis=-1))

    def _forward(self, variables: dict[str, Any], inputs: jax.Array) -> jax.Array:
        return self.module.apply(variables, inputs, train=False)

    def _forward_raw(self, variables: dict[str, Any], raw_images: jax.Array) -> jax.Array:
        return self._forward(variables, self.preprocessing(raw_images))

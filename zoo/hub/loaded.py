"""`LoadedModel`: a restored checkpoint, ready to classify raw images, with its class names."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import InvalidValueError
from zoo.hub.records import CLASS_NAMES, check_class_names, class_outputs
from zoo.preprocessing import Preprocessing, check_raw


class Prediction(NamedTuple):
    """One class of an image's prediction: its id (the output index), name and probability."""

    class_id: int
    name: str
    probability: float


def top_predictions(
    probabilities: np.ndarray, class_names: Sequence[str], top: int
) -> list[list[Prediction]]:
    """The `top` most probable classes of each row of (N, K) `probabilities`, most probable
    first (a tie: the lower id first), named by `class_names`."""
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
    return [
        [Prediction(int(i), class_names[i], float(row[i])) for i in ids]
        for row, ids in zip(probabilities, order, strict=True)
    ]


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
      class_names: a classifier's name of each output, from `meta["class_names"]` (the data
        set's, or ImageNet's for torchvision weights); a step saved without names names its
        classes by their ids ("0", "1", ...). None for a model without class outputs.
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
    class_names: tuple[str, ...] | None = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        record = self.meta.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(record) if record is not None else None
        self.class_names = self._class_names()
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
        """Class ids (N,) for raw uint8 images (N, H, W[, C]); `class_names[id]` names them."""
        return np.asarray(jnp.argmax(self.logits(raw_images), axis=-1))

    def probabilities(self, raw_images: np.ndarray | jax.Array) -> np.ndarray:
        """Class probabilities (N, classes), the softmax of `logits`, in float32."""
        return np.asarray(jax.nn.softmax(self.logits(raw_images).astype(jnp.float32), axis=-1))

    def classify(self, raw_images: np.ndarray | jax.Array, top: int = 5) -> list[list[Prediction]]:
        """Each image's `top` most probable classes, most probable first, by id, name and
        probability: `[[Prediction(class_id=7, name="7", probability=0.98), ...], ...]`."""
        if self.class_names is None:
            raise InvalidValueError(f"{self.name} ({self.model_name}) has no class outputs")
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InvalidValueError(f"top must be a positive number of classes, got {top!r}")
        return top_predictions(self.probabilities(raw_images), self.class_names, top)

    def _class_names(self) -> tuple[str, ...] | None:
        classes = class_outputs(
            self.model_name, {"num_classes": getattr(self.module, "num_classes", 0)}
        )
        recorded = self.meta.get(CLASS_NAMES)
        if recorded is None:
            return tuple(map(str, range(classes))) if classes else None
        return check_class_names(recorded, classes, f"{self.name} step {self.step}")

    def _forward(self, variables: dict[str, Any], inputs: jax.Array) -> jax.Array:
        return self.module.apply(variables, inputs, train=False)

    def _forward_raw(self, variables: dict[str, Any], raw_images: jax.Array) -> jax.Array:
        return self._forward(variables, self.preprocessing(raw_images))

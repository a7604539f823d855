"""jax-zoo: a functional model zoo for JAX.

import zoo
zoo.list_models("resnet*")
model = zoo.create_model("resnet18", num_classes=10)
print(zoo.summary("lenet5"))
"""

from zoo import runtime  # noqa: F401  (first: XLA:CPU defaults before any JAX backend)
from zoo.features import FeatureInfo, extract_features, feature_info, feature_stages
from zoo.hub import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    list_checkpoints,
    load,
    save,
)
from zoo.registry import ModelInfo, UnknownModelError, create_model, list_models, model_info
from zoo.summary import Summary, summary

__all__ = [
    "ArchitectureMismatchError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "FeatureInfo",
    "ModelInfo",
    "Summary",
    "UnknownModelError",
    "create_model",
    "extract_features",
    "feature_info",
    "feature_stages",
    "list_checkpoints",
    "list_models",
    "load",
    "model_info",
    "save",
    "summary",
]

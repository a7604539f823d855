"""jax-zoo: a functional model zoo for JAX.

import zoo
zoo.configure_cpu()  # optional, first: the CPU settings `zoo train` uses (zoo.runtime)
zoo.list_models("resnet*")
model = zoo.create_model("resnet18", num_classes=10)
print(zoo.summary("lenet5"))
"""

from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.features import FeatureInfo, extract_features, feature_info, feature_stages
from zoo.models.heads import replace_head
from zoo.registry import (
    ModelInfo,
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register,
)
from zoo.runtime import CpuSettings, configure_cpu
from zoo.summary import Summary, summary

if TYPE_CHECKING:
    from zoo.hub import (
        ArchitectureMismatchError,
        CheckpointNotFoundError,
        CorruptCheckpointError,
        list_checkpoints,
        load,
        read_metadata,
        save,
    )

# The registry's names load `zoo.hub` on first use: Orbax is slow to import, which a
# script that only creates and trains models need not wait for.
_FROM_HUB = frozenset(
    {
        "ArchitectureMismatchError",
        "CheckpointNotFoundError",
        "CorruptCheckpointError",
        "list_checkpoints",
        "load",
        "read_metadata",
        "save",
    }
)


def __getattr__(name: str) -> Any:
    if name in _FROM_HUB:
        from zoo import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_HUB})


__all__ = [
    "ArchitectureMismatchError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "CpuSettings",
    "FeatureInfo",
    "ModelInfo",
    "Summary",
    "UnknownModelError",
    "ZooError",
    "configure_cpu",
    "create_model",
    "extract_features",
    "feature_info",
    "feature_stages",
    "list_checkpoints",
    "list_models",
    "load",
    "model_info",
    "read_metadata",
    "register",
    "replace_head",
    "save",
    "summary",
]

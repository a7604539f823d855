"""jax-zoo: a functional model zoo for JAX.

import zoo
zoo.configure_cpu()  # optional, first: the CPU settings `zoo train` uses (zoo.runtime)
zoo.list_models("resnet*")
model = zoo.create_model("resnet18", num_classes=10)
print(zoo.summary("lenet5"))
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.features import FeatureInfo, extract_features, feature_info, feature_stages
    from zoo.hub import (
        ArchitectureMismatchError,
        CheckpointNotFoundError,
        CorruptCheckpointError,
        list_checkpoints,
        load,
        read_metadata,
        save,
    )
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

# The public names load their modules on first use, so that `import zoo` imports no JAX: the
# command line installs its Ctrl-C handling before JAX loads (`zoo.interrupts`), and Orbax
# (`zoo.hub`, ~0.4 s) loads only for a script that saves or loads.
_LAZY = {
    **dict.fromkeys(
        ("FeatureInfo", "extract_features", "feature_info", "feature_stages"), "zoo.features"
    ),
    **dict.fromkeys(
        (
            "ArchitectureMismatchError",
            "CheckpointNotFoundError",
            "CorruptCheckpointError",
            "list_checkpoints",
            "load",
            "read_metadata",
            "save",
        ),
        "zoo.hub",
    ),
    "replace_head": "zoo.models.heads",
    **dict.fromkeys(
        ("ModelInfo", "UnknownModelError", "create_model", "list_models", "model_info", "register"),
        "zoo.registry",
    ),
    **dict.fromkeys(("CpuSettings", "configure_cpu"), "zoo.runtime"),
    **dict.fromkeys(("Summary", "summary"), "zoo.summary"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:  # A submodule not imported yet: `zoo.models`, `zoo.training`, ...
        return importlib.import_module(f"zoo.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"zoo.{name}":
            raise
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """`zoo` itself. `zoo.summary` is the function, also once the module `zoo.summary` (which
    defines it) is imported: the import system then binds the module to the package's attribute
    of that name, and an eager `from zoo.summary import summary` used to bind the function back."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == f"zoo.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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

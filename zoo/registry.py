"""The model registry: every zoo network by name.

`register` is called once per variant, at import of its family module; `create_model` builds a
`flax.linen.Module` from the recorded defaults plus the caller's overrides, and validates both
before any tracing happens. The module is the model's only description: its per-layer table
(`zoo.analytic`) and its feature stages (its `feature_stages` method) come from it. Unknown
names raise `UnknownModelError` (a `KeyError`) that lists the closest registered names, as
`difflib` ranks them.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from zoo.errors import InvalidTypeError, InvalidValueError, ZooError, brief
from zoo.fields import conform_all


class UnknownModelError(ZooError, KeyError):
    """A model name that is not in the registry; the message lists the closest names."""

    def __init__(self, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = (
            f"did you mean: {', '.join(close)}?" if close else f"known models: {', '.join(known)}"
        )
        self.name = name
        super().__init__(f"unknown model {name!r}; {hint}")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model, independent of Flax.

    Attributes:
      name: the registry name.
      module: the `flax.linen.Module` class that `create_model` builds.
      defaults: the config fields this variant sets (stage sizes, widths, ...).
      reference_params: the published trainable parameter count at the default config.
      paper: the paper, table or figure the variant follows.
      description: one line for `zoo list`.
      task: "classification", or "reconstruction" for an autoencoder.
    """

    name: str
    module: type[nn.Module]
    defaults: Mapping[str, Any]
    reference_params: int | None
    paper: str
    description: str
    task: str = "classification"

    @property
    def num_classes(self) -> int | None:
        return self.config().get("num_classes")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (height, width, channels) the variant was designed for."""
        config = self.config()
        return (*config["input_size"], config["in_channels"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-example output: (num_classes,), or the input shape for a reconstruction model."""
        return self.input_shape if self.task == "reconstruction" else (self.num_classes,)

    @property
    def fixed_input_size(self) -> bool:
        """True when only `input_shape` works (e.g. a flatten into a dense layer)."""
        return self.module(**self.config()).fixed_input_size

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The full constructor config: module field defaults, variant defaults, overrides.

        Each value is checked against its field's annotation (`zoo.fields`): a wrong type is an
        `InvalidValueError` naming the field, before the module is built.
        """
        fields = _config_fields(self.module)
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise InvalidTypeError(
                f"{self.name}: unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"valid arguments: {', '.join(sorted(fields))}"
            )
        config = {k: f.default for k, f in fields.items() if f.default is not dataclasses.MISSING}
        config.update(self.defaults)
        config.update(overrides)
        missing = sorted(set(fields) - set(config))
        if missing:
            raise InvalidTypeError(f"{self.name}: missing argument(s) {', '.join(missing)}")
        # JSON and the command line give lists where the module wants tuples, names for dtypes.
        return conform_all(self.name, self.module, config)


_REGISTRY: dict[str, ModelInfo] = {}


def _config_fields(module: type[nn.Module]) -> dict[str, dataclasses.Field]:
    """The user-facing dataclass fields of a Flax module (not Flax's own `parent` and `name`)."""
    return {
        f.name: f for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")
    }


def register(
    name: str,
    module: type[nn.Module],
    *,
    paper: str,
    description: str,
    reference_params: int | None = None,
    task: str = "classification",
    **defaults: Any,
) -> ModelInfo:
    """Adds a variant to the registry; registering a name twice is an error.

    `module` is a `flax.linen.Module` class whose dataclass fields are the whole config (an
    `zoo.models.base.ImageModel`: num_classes, in_channels, input_size, ...); `defaults` sets
    this variant's fields. Returns the record `model_info(name)` gives.
    """
    if name in _REGISTRY:
        raise InvalidValueError(f"model {name!r} is already registered")
    info = ModelInfo(
        name=name,
        module=module,
        defaults=dict(defaults),
        reference_params=reference_params,
        paper=paper,
        description=description,
        task=task,
    )
    info.module(**info.config())  # Fail at import, not at first use, on defaults that do not fit.
    _REGISTRY[name] = info
    return info


def unregister(name: str) -> None:
    """Removes `name` from the registry (for a model registered in a test or a notebook)."""
    model_info(name)  # UnknownModelError with close matches for a name never registered.
    del _REGISTRY[name]


def _ensure_models_imported() -> None:
    # The families register themselves on import; importing here keeps `zoo.registry` free of
    # import cycles while making every lookup see the whole zoo.
    import zoo.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch pattern (like `timm.list_models`), sorted."""
    if not isinstance(pattern, str):
        raise InvalidTypeError(
            f"a model name pattern is a string such as 'resnet*', got {pattern!r}"
        )
    _ensure_models_imported()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The registry record of `name`; raises `UnknownModelError` with close matches."""
    if not isinstance(name, str):
        raise InvalidTypeError(f"a model name is a string such as 'resnet18', got {brief(name)}")
    _ensure_models_imported()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(name, sorted(_REGISTRY)) from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds the registered model `name`, with config fields overridden by keyword.

    >>> model = create_model("resnet18", num_classes=10)
    >>> variables = model.init(jax.random.key(0), x, train=False)

    Raises `UnknownModelError` for an unknown name, `TypeError` for an unknown argument and
    `ValueError` for a bad value (each naming the argument).
    """
    info = model_info(name)
    return info.module(**info.config(**overrides))

"""The per-layer summary of a zoo model, computed from the lecture's formulas alone.

`summary("resnet50")` is `zoo.analytic.describe` of the registered module: the formulas applied
to each of its layers, walked through its own code under `jax.eval_shape` (no variables are
created, nothing is compiled, and the result is cached). The tests prove every row equal to the
real initialised variables and intermediate outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from zoo.analytic import Layer, describe
from zoo.errors import InvalidValueError
from zoo.models.layers import fits_input
from zoo.registry import ModelInfo, model_info


@dataclasses.dataclass(frozen=True)
class Summary:
    """Layers of one model at one input shape, with totals (trainable params, MACs per image)."""

    model: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    reference_params: int | None = None

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

    def __str__(self) -> str:
        header = ("layer", "kind", "output", "params", "MACs")
        rows = [
            (
                layer.name,
                layer.kind,
                _shape(layer.output_shape),
                f"{layer.params:,}",
                f"{layer.macs:,}",
            )
            for layer in self.layers
        ]
        total = (
            "total",
            "",
            _shape(self.output_shape),
            f"{self.total_params:,}",
            f"{self.total_macs:,}",
        )
        widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(5)]

        def line(row: tuple[str, ...]) -> str:
            left = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False)]
            right = [cell.rjust(width) for cell, width in zip(row[3:], widths[3:], strict=True)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(line(header))
        lines = [f"{self.model}: input {_shape(self.input_shape)}", line(header), rule]
        lines += [line(row) for row in rows] + [rule, line(total)]
        if self.reference_params is not None:
            verdict = "matches" if self.reference_params == self.total_params else "DIFFERS from"
            lines.append(f"{verdict} the published count {self.reference_params:,}")
        return "\n".join(lines)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def summary(
    model: str, input_shape: tuple[int, int, int] | None = None, **overrides: Any
) -> Summary:
    """The analytic per-layer table of registered model `model`, config overridden by keyword.

    `input_shape` is (height, width, channels); by default the one the model was designed for.
    The published parameter count is shown when the config is the registered default.
    """
    info = model_info(model)
    module = info.module(**info.config(**overrides))
    shape = info.input_shape if input_shape is None else tuple(input_shape)
    _check_shape(info, module, shape)
    reference = info.reference_params if not overrides and shape == info.input_shape else None
    return Summary(info.name, shape, describe(module, shape), reference)


# The longest side an input shape may have: 16x the longest image the zoo reads from a file
# (`zoo.images.MAX_PIXELS` is 4096x4096), far below where a shape's size stops fitting int64.
MAX_INPUT_SIDE = 65_536


def check_input_shape(shape: Any) -> tuple[int, int, int]:
    """`shape` as (height, width, channels) of positive integers up to `MAX_INPUT_SIDE`, or an
    `InvalidValueError` saying so."""
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or not all(1 <= d <= MAX_INPUT_SIDE for d in shape)
    ):
        raise InvalidValueError(
            f"an input shape is (height, width, channels), positive integers of at most "
            f"{MAX_INPUT_SIDE:,} such as (224, 224, 3), got {shape!r}"
        )
    return tuple(shape)  # type: ignore[return-value]


def _check_shape(info: ModelInfo, module: nn.Module, shape: tuple[int, ...]) -> None:
    check_input_shape(shape)
    expected = (*module.input_size, module.in_channels)
    if not fits_input(shape, expected, fixed_size=module.fixed_input_size):
        want = _shape(expected) if module.fixed_input_size else f"HxWx{expected[-1]}"
        raise InvalidValueError(f"{info.name} takes inputs of shape {want}, got {_shape(shape)}")

"""`filters`: the learned kernels of one convolution (by default the first) as a grid of tiles.

First layers look at pixels, so their kernels read as pictures: RGB kernels (AlexNet's conv1,
11x11x3) are drawn in colour, each scaled to its own range; single-channel kernels (LeNet-5's C1,
5x5x1) on one diverging scale centred on zero, so sign and size compare across kernels. A deeper
convolution shows one tile per (input, output) channel pair.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from zoo.errors import InvalidValueError
from zoo.hub import load
from zoo.plot.figure import (
    checkpoint_picture,
    mosaic,
    new_figure,
    output_path,
    quarter_inches,
    save_figure,
    show_map,
    symmetric_limit,
    tile_centres,
)
from zoo.summary import summary

WIDTH = 9.0
# The tile grid is drawn this wide; the figure is as tall as the grid needs (within limits),
# plus room for the title.
GRID_WIDTH, TITLE_HEIGHT = 7.0, 1.0
MIN_HEIGHT, MAX_HEIGHT = 3.0, 10.0
MAX_KERNELS = 128
# A deeper layer's (input, output) grid stops here; it would otherwise run to thousands of tiles.
MAX_INPUTS, MAX_OUTPUTS = 16, 32
WEIGHT_CMAP = "RdBu_r"


def filters(
    name: str,
    *,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    registry: str | os.PathLike | None = None,
) -> Path:
    """Plots the kernels of convolution `layer` of checkpoint `name`; returns the PNG's path.

    Args:
      name: the registry name; its latest step, or `step`, is loaded.
      layer: the convolution's module path ("c1", "conv1", "stage1_block0/conv1", ...); default:
        the model's first convolution.
      out: where to write; default plots/<registry folder>/<name>-step_<N>-filters-<layer>.png.
      registry: the registry folder (see `zoo.hub.registry_root`).
    """
    model = load(name, step=step, registry=registry)
    layer = layer or first_convolution(model.model_name)
    kernel = conv_kernel(model.variables["params"], layer, model.model_name)
    path = output_path(
        out, checkpoint_picture(model.path, f"filters-{layer.replace('/', '_')}"), registry=registry
    )
    height, width, inputs, outputs = kernel.shape
    title = f"{name}: {layer}, {outputs} kernels of {height}x{width}x{inputs}"
    if inputs in (1, 3):
        shown = min(outputs, MAX_KERNELS)
        grid = _kernel_tiles(kernel[..., :shown])
        title += f" (the first {shown})" if shown < outputs else ""
        title += "\nin RGB, each scaled to its own range" if inputs == 3 else ""
    else:
        grid = _channel_pair_tiles(kernel)

    figure = new_figure(WIDTH, figure_height(grid.shape[:2]))
    axes = figure.subplots()
    axes.set_title(title)
    if grid.ndim == 3:  # RGB tiles, already in [0, 1].
        axes.imshow(grid, interpolation="nearest")
    else:
        limit = symmetric_limit(grid)  # One scale centred on zero: sign and size compare.
        image = show_map(axes, grid, WEIGHT_CMAP, -limit, limit)
        figure.colorbar(image, ax=axes, label="weight", shrink=0.8)
    if inputs in (1, 3):
        axes.set_axis_off()
    else:
        _label_channel_pairs(axes, kernel.shape)
    return save_figure(figure, path)


def figure_height(grid_shape: tuple[int, int]) -> float:
    """Inches for a tile grid of `grid_shape` (rows, columns) cells drawn GRID_WIDTH wide."""
    rows, columns = grid_shape
    return quarter_inches(
        min(MAX_HEIGHT, max(MIN_HEIGHT, GRID_WIDTH * rows / columns + TITLE_HEIGHT))
    )


def first_convolution(model_name: str) -> str:
    """The module path of the first "conv" row of the model's summary."""
    for row in summary(model_name).layers:
        if row.kind == "conv":
            return row.name
    raise InvalidValueError(f"{model_name} has no convolution, so it has no filters to show")


def conv_kernel(params: dict[str, Any], layer: str, model_name: str) -> np.ndarray:
    """The (KH, KW, C_in, C_out) kernel of module `layer` as float32 numpy."""
    kernels = {
        "/".join(path[:-1]): value
        for path, value in traverse_util.flatten_dict(params).items()
        if path[-1] == "kernel" and np.ndim(value) == 4
    }
    if layer not in kernels:
        raise InvalidValueError(
            f"{layer!r} is not a convolution of {model_name}; its convolutions are "
            f"{', '.join(kernels) or 'none'}"
        )
    return np.asarray(kernels[layer], np.float32)


def _kernel_tiles(kernel: np.ndarray) -> np.ndarray:
    """Single- or three-channel kernels (H, W, C, N) as one grid, about 3 tiles wide per 2 high.

    The grid is full where a column count between sqrt(N) and sqrt(2N) divides N (64 as 8x8).
    Grey kernels keep their weights; RGB kernels are stretched to [0, 1] each, to be shown as
    colours (their weights' scale differs too much from kernel to kernel to share one).
    """
    count = kernel.shape[-1]
    tiles = np.moveaxis(kernel, -1, 0)  # (N, H, W, C)
    candidates = range(math.ceil(math.sqrt(count)), math.ceil(math.sqrt(2 * count)) + 1)
    columns = min(candidates, key=lambda c: (-count % c, abs(c - math.sqrt(1.5 * count))))
    if kernel.shape[2] == 3:
        return mosaic(_each_to_unit_range(tiles), columns, gap_value=1.0)
    return mosaic(tiles[..., 0], columns)


def _channel_pair_tiles(kernel: np.ndarray) -> np.ndarray:
    """One tile per (input, output) channel pair: a row per input, a column per output channel.

    LeNet-5's C3 then reads like Table I of the paper (rows: S2 maps, columns: C3 maps).
    """
    height, width, inputs, outputs = kernel.shape
    rows, columns = min(inputs, MAX_INPUTS), min(outputs, MAX_OUTPUTS)
    tiles = np.transpose(kernel[:, :, :rows, :columns], (2, 3, 0, 1))  # (in, out, H, W)
    return mosaic(tiles.reshape(-1, height, width), columns)


def _label_channel_pairs(axes, kernel_shape: tuple[int, ...]) -> None:
    height, width, inputs, outputs = kernel_shape
    rows, columns = min(inputs, MAX_INPUTS), min(outputs, MAX_OUTPUTS)
    axes.set_xticks(tile_centres(columns, width), range(columns))
    axes.set_yticks(tile_centres(rows, height), range(rows))
    axes.tick_params(length=0, labelsize=7)
    shown = "" if columns == outputs else f" (the first {columns} of {outputs})"
    axes.set_xlabel(f"output channel{shown}")
    shown = "" if rows == inputs else f" (the first {rows} of {inputs})"
    axes.set_ylabel(f"input channel{shown}")


def _each_to_unit_range(tiles: np.ndarray) -> np.ndarray:
    """Every tile (N, H, W, C) stretched to [0, 1] by its own min and max (flat tiles: 0.5)."""
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1), 0.5)

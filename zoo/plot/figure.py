"""Making and saving figures: matplotlib's object API on the Agg canvas, never a GUI.

Figures are built as `matplotlib.figure.Figure` objects rather than through `pyplot`, so no GUI
backend is ever chosen (a headless machine needs no `MPLBACKEND`) and no figure lingers in
pyplot's global list after it is saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from zoo import files
from zoo.errors import InvalidValueError
from zoo.hub import check_outside_registries
from zoo.outputs import write_with

DPI = 100
PLOTS_DIR = Path("plots")
# Gaps between tiles show as this colour (NaN cells in single-channel mosaics).
GAP_COLOUR = "white"


def new_figure(width: float, height: float) -> Figure:
    """A `width` x `height` inch figure (DPI pixels per inch) with constrained layout."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def quarter_inches(inches: float) -> float:
    """`inches` rounded to a quarter inch.

    A quarter inch is a whole number of pixels and exact in binary, so the picture is exactly
    figsize * DPI pixels rather than one short from float rounding.
    """
    return round(inches * 4) / 4


def output_path(
    out: str | os.PathLike | None,
    default_name: str,
    *,
    registry: str | os.PathLike | None = None,
) -> Path:
    """Where a picture goes: `out`, else plots/`default_name` under the current folder.

    Checked before the picture is computed, so a bad name, a folder that cannot be written or
    one inside a checkpoint registry (the user's, the shipped one, `registry`, or any other:
    `zoo.hub.check_outside_registries`) fails at once. The format follows the suffix: .png, or
    any other that matplotlib writes (.svg, .pdf, ...).
    """
    path = PLOTS_DIR / default_name if out is None else Path(out)
    check_outside_registries(path, "cannot save a picture as", registry=registry)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise InvalidValueError(
            f"cannot save a picture as {str(path)!r}: expected a file name ending in .png "
            f"(or one of .{', .'.join(sorted(formats))})"
        )
    _check_writable(path)
    return path


def checkpoint_picture(step_folder: Path, picture: str) -> str:
    """The default file name of `picture` of a saved step: <registry>/<name>-step_<N>-<picture>.png.

    The registry's folder name and the step keep apart pictures of the same name in two
    registries (the shipped checkpoints/ and one's own retraining, which reaches the same step)
    and of two steps of one run.
    """
    name_dir = step_folder.parent
    return f"{name_dir.parent.name}/{name_dir.name}-{step_folder.name}-{picture}.png"


def _check_writable(path: Path) -> None:
    """Raises unless a picture can be written at `path` (`zoo.files.check_writable`)."""
    if path.is_dir():
        raise InvalidValueError(f"cannot save a picture as {path}: it is a folder")
    files.check_writable(path, "cannot save a picture as")


def save_figure(figure: Figure, path: Path) -> Path:
    """Writes `figure` to `path` (its folder is created) and returns `path`.

    The picture is exactly figsize * DPI pixels: no tight bounding box trims it. It is written
    whole or not at all (`zoo.outputs`): a failed write leaves an older picture as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format = path.suffix.lstrip(".").lower()
    write_with(path, lambda file: figure.savefig(file, dpi=DPI, format=file_format))
    return path


def mosaic(tiles: np.ndarray, columns: int, gap_value: float = np.nan) -> np.ndarray:
    """Tiles (N, H, W[, C]) laid out row by row, `columns` wide, one cell of `gap_value` apart.

    One image for a whole grid draws far faster than one axes per tile, and keeps the tiles on
    one colour scale.
    """
    count, height, width = tiles.shape[:3]
    rows = -(-count // columns)
    grid = np.full(
        (rows * (height + 1) - 1, columns * (width + 1) - 1, *tiles.shape[3:]),
        gap_value,
        np.float32,
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * (height + 1), column * (width + 1)
        grid[top : top + height, left : left + width] = tile
    return grid


def show_map(axes, image: np.ndarray, cmap: str, vmin: float, vmax: float, **options) -> AxesImage:
    """`image` on colour map `cmap` from `vmin` to `vmax`, NaN cells in the gap colour.

    Cells are drawn as blocks (no smoothing) unless `options` says otherwise: kernels and
    feature maps are a few cells wide, and blurring them would invent detail.
    """
    colours = matplotlib.colormaps[cmap].with_extremes(bad=GAP_COLOUR)
    options.setdefault("interpolation", "nearest")
    return axes.imshow(image, cmap=colours, vmin=vmin, vmax=vmax, **options)


def tile_centres(count: int, size: int) -> list[float]:
    """Where the centres of `count` tiles `size` cells wide fall along a `mosaic` axis."""
    return [i * (size + 1) + (size - 1) / 2 for i in range(count)]


def symmetric_limit(values: np.ndarray) -> float:
    """The largest magnitude in `values`, so that a diverging colour map centres on zero."""
    limit = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    return limit if limit > 0 else 1.0  # An all-zero map still needs a valid range.

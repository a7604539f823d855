"""`edges`: the lecture's Sobel edge detector on an image, through our reference convolution.

K1 = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] responds where brightness rises from left to right
(vertical edges), K2 = K1.T where it rises from top to bottom (horizontal edges); the gradient
magnitude sqrt(gx^2 + gy^2) outlines every edge whatever its direction. The responses are
computed by `zoo.reference_ops.sobel_edges`, the lecture's z[i, j] = sum_u sum_v x[i+u, j+v]
w[u, v], on intensities in [0, 1].
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from zoo.images import ImageSource, grey, raw_image
from zoo.plot.figure import (
    new_figure,
    output_path,
    quarter_inches,
    save_figure,
    show_map,
    symmetric_limit,
)
from zoo.reference_ops import sobel_edges

WIDTH = 16.0
# Each of the four panels is about this wide; the figure is as tall as the image's shape needs
# (within limits), plus room for the titles.
PANEL_WIDTH, TITLES_HEIGHT = 3.5, 1.5
MIN_HEIGHT, MAX_HEIGHT = 3.0, 9.0
GRADIENT_CMAP, MAGNITUDE_CMAP = "RdBu_r", "magma"


def edges(image: ImageSource, *, out: str | os.PathLike | None = None) -> Path:
    """Plots `image`, its Sobel K1 and K2 responses and the gradient magnitude; returns the path.

    Args:
      image: a raw uint8 image (H, W[, C]) as an array, a .npy file, or an image file; colour
        images are converted to grey (ITU-R 601 luma) first.
      out: where to write; default plots/<image file stem>-edges.png (plots/edges.png for an
        array).
    """
    stem = "edges" if isinstance(image, np.ndarray) else f"{Path(image).stem}-edges"
    path = output_path(out, f"{stem}.png")
    intensity = grey(raw_image(image))
    gx, gy, magnitude = (np.asarray(a) for a in sobel_edges(intensity))

    figure = new_figure(WIDTH, figure_height(intensity.shape))
    panels = figure.subplots(1, 4)
    figure.suptitle(
        f"Sobel edge detection, reference convolution, zero padding 1 "
        f"({intensity.shape[0]}x{intensity.shape[1]} image)"
    )
    # Photos have more pixels than the panel: let matplotlib antialias rather than drop rows.
    show = functools.partial(show_map, interpolation="auto")
    show(panels[0], intensity, "gray", 0.0, 1.0)
    panels[0].set_title("input (grey, 0..1)")
    limit = symmetric_limit(np.stack([gx, gy]))  # One scale: K1 and K2 responses compare.
    for axes, response, title in (
        (panels[1], gx, "K1 (gx): vertical edges\n[[-1 0 1] [-2 0 2] [-1 0 1]]"),
        (panels[2], gy, "K2 = K1ᵀ (gy): horizontal edges\n[[-1 -2 -1] [0 0 0] [1 2 1]]"),
    ):
        shown = show(axes, response, GRADIENT_CMAP, -limit, limit)
        axes.set_title(title)
    figure.colorbar(shown, ax=panels[1:3], label="response", shrink=0.8)
    shown = show(panels[3], magnitude, MAGNITUDE_CMAP, 0.0, float(magnitude.max()) or 1.0)
    panels[3].set_title("magnitude sqrt(gx² + gy²)")
    figure.colorbar(shown, ax=panels[3], label="gradient magnitude", shrink=0.8)
    for axes in panels:
        axes.set_axis_off()
    return save_figure(figure, path)


def figure_height(image_shape: tuple[int, int]) -> float:
    """Inches for four panels of an (H, W) image, each PANEL_WIDTH wide."""
    height, width = image_shape
    return quarter_inches(
        min(MAX_HEIGHT, max(MIN_HEIGHT, PANEL_WIDTH * height / width + TITLES_HEIGHT))
    )

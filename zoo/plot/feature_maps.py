"""`features`: what each convolutional stage of a saved model computes for one input image.

The image goes through the checkpoint's own preprocessing (so a photo or a digit is resized and
standardised exactly as `zoo predict` would, and inverted when it is on a light background while
the training images are dark), then `zoo.extract_features` records every stage.
Each stage is one row of its first channels on one colour scale, so a dead channel shows as
dark next to its live neighbours.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.errors import InvalidValueError
from zoo.features import extract_features
from zoo.hub import load
from zoo.images import ImageSource, converted, on_training_background, raw_image
from zoo.plot.figure import (
    checkpoint_picture,
    mosaic,
    new_figure,
    output_path,
    save_figure,
    show_map,
    tile_centres,
)

WIDTH = 13.0
TITLE_HEIGHT, ROW_HEIGHT = 0.75, 1.5
DEFAULT_CHANNELS = 8
FEATURE_CMAP = "viridis"


def features(
    name: str,
    image: ImageSource,
    *,
    channels: int = DEFAULT_CHANNELS,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    registry: str | os.PathLike | None = None,
) -> Path:
    """Plots the feature maps of every stage of checkpoint `name` for `image`; returns the path.

    Args:
      name: the registry name; its latest step, or `step`, is loaded. It must have been saved
        with its preprocessing.
      image: a raw uint8 image (H, W[, C]) as an array, a .npy file, or an image file; it is
        converted to the training images' channels and size.
      channels: how many channels (the first ones) to show per stage.
      out: where to write; default
        plots/<registry folder>/<name>-step_<N>-features[-<image file stem>].png.
      registry: the registry folder (see `zoo.hub.registry_root`).
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise InvalidValueError(f"channels must be a positive int, got {channels!r}")
    model = load(name, step=step, registry=registry)
    stem = "" if isinstance(image, np.ndarray) else f"-{Path(image).stem}"
    path = output_path(out, checkpoint_picture(model.path, f"features{stem}"), registry=registry)
    if model.preprocessing is None:
        raise InvalidValueError(
            f"{name} step {model.step} was saved without its preprocessing, so an "
            "image cannot be turned into its input"
        )
    raw = converted(raw_image(image), model.preprocessing.source_shape)
    (raw,), (inverted,) = on_training_background(raw[None], model.preprocessing)
    maps = extract_features(model.module, model.variables, model.preprocessing(raw[None]))

    figure = new_figure(WIDTH, TITLE_HEIGHT + ROW_HEIGHT * len(maps))
    layout = [["input" if row == 0 else ".", stage] for row, stage in enumerate(maps)]
    panels = figure.subplot_mosaic(layout, width_ratios=[1, 6])
    figure.suptitle(f"{name} ({model.model_name}): feature maps per stage, first channels")
    panels["input"].imshow(
        raw.squeeze(-1) if raw.shape[-1] == 1 else raw, cmap="gray", vmin=0, vmax=255
    )
    inverted_note = "\n(light background:\ninverted)" if inverted else ""
    panels["input"].set_title(f"input {raw.shape[0]}x{raw.shape[1]}{inverted_note}")
    panels["input"].set_axis_off()
    # Every row is as wide as the widest, so the same channel index lines up down the figure.
    columns = min(channels, max(feature_map.shape[-1] for feature_map in maps.values()))
    for stage, feature_map in maps.items():
        _draw_stage(figure, panels[stage], stage, np.asarray(feature_map[0]), columns)
    panels[stage].set_xlabel("channel")
    return save_figure(figure, path)


def _draw_stage(figure, axes, stage: str, feature_map: np.ndarray, columns: int) -> None:
    """The first `columns` maps (H, W, C) of one stage side by side, with a shared colour bar."""
    height, width, count = feature_map.shape
    shown = min(columns, count)
    tiles = np.moveaxis(feature_map[..., :shown], -1, 0)
    image = show_map(axes, mosaic(tiles, columns), FEATURE_CMAP, tiles.min(), tiles.max())
    figure.colorbar(image, ax=axes, aspect=10, pad=0.01)
    axes.set_xticks(tile_centres(shown, width), range(shown))
    axes.set_yticks([])
    axes.tick_params(length=0, labelsize=8)
    axes.spines[:].set_visible(False)  # A frame would also box the blank of a narrower row.
    axes.set_ylabel(f"{stage}\n{height}x{width}x{count}")

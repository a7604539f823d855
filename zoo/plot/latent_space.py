"""`latent`: an autoencoder's 2-D code space, the lecture's closing picture.

Left, the held-out images of the data set the autoencoder trained on, each at its code (z1, z2)
and coloured by its label, which training never saw: classes that form clusters were told apart
by reconstruction alone. Right, the decoder's images for a grid of codes spanning where the data
lies, laid out on the same axes, so one sees what each region of the plane means.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import matplotlib
import numpy as np
from matplotlib.patches import Rectangle

from zoo.errors import InvalidValueError
from zoo.hub import LoadedModel, load
from zoo.plot.figure import (
    checkpoint_picture,
    mosaic,
    new_figure,
    output_path,
    save_figure,
    show_map,
)

WIDTH, HEIGHT = 15.0, 7.0
DEFAULT_GRID = 12
# The decoded grid spans these percentiles of the codes, so that a few outliers do not stretch
# it over empty plane.
SPAN_PERCENTILES = (1, 99)
MAX_POINTS = 5_000
CLASS_CMAP = "tab10"


def latent(
    name: str,
    *,
    grid: int = DEFAULT_GRID,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    registry: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Plots held-out images at autoencoder `name`'s 2-D codes beside decodes; returns the path.

    Args:
      name: a checkpoint of a model with a 2-D `encode` and a `decode` (`conv_autoencoder`),
        saved with its preprocessing; its latest step, or `step`, is loaded.
      grid: decoded images per side of the grid.
      out: where to write; default plots/<registry folder>/<name>-step_<N>-latent.png.
      registry: the registry folder (see `zoo.hub.registry_root`).
      data_dir: the data folder (see `zoo.data.load_dataset`); the data set is the one the
        checkpoint records in meta["dataset"], else the embedded mnist5k digits.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise InvalidValueError(f"grid must be an int of at least 2, got {grid!r}")
    model = load(name, step=step, registry=registry)
    path = output_path(out, checkpoint_picture(model.path, "latent"), registry=registry)
    _check_autoencoder(model)
    dataset = _held_out(model, data_dir)
    images, labels = dataset.test.images[:MAX_POINTS], dataset.test.labels[:MAX_POINTS]
    codes = np.asarray(_apply(model, "encode", model.preprocessing(images)))
    if codes.shape[-1] != 2:
        raise InvalidValueError(
            f"{name} encodes to {codes.shape[-1]} dimensions; the latent plane "
            "needs a 2-D code (conv_autoencoder with latent_dim=2)"
        )

    low, high = np.percentile(codes, SPAN_PERCENTILES, axis=0)
    figure = new_figure(WIDTH, HEIGHT)
    scatter_axes, decoded_axes = figure.subplots(1, 2)
    figure.suptitle(f"{name}: the 2-D latent space of {model.model_name}")
    _draw_codes(scatter_axes, codes, labels, dataset.num_classes, (low, high))
    scatter_axes.set_title(f"{len(codes):,} held-out {dataset.name} images at their codes")
    _draw_decodes(decoded_axes, model, low, high, grid)
    return save_figure(figure, path)


def _check_autoencoder(model: LoadedModel) -> None:
    has_coder = all(
        callable(getattr(model.module, method, None)) for method in ("encode", "decode")
    )
    if not has_coder:
        raise InvalidValueError(
            f"{model.name} is a {model.model_name}, which has no encode/decode; "
            "the latent plot needs an autoencoder (conv_autoencoder)"
        )
    if model.preprocessing is None:
        raise InvalidValueError(
            f"{model.name} step {model.step} was saved without its preprocessing, "
            "so the data set's images cannot be turned into its input"
        )


def _held_out(model: LoadedModel, data_dir: str | os.PathLike | None):
    # The data loader brings in TFDS; only this picture needs it.
    from zoo.data import load_dataset

    return load_dataset(
        model.meta.get("dataset", "mnist5k"),
        data_dir=data_dir,
        image_shape=model.preprocessing.source_shape,
        num_classes=model.module.num_classes,
    )


def _apply(model: LoadedModel, method: str, inputs: np.ndarray) -> jax.Array:
    return jax.jit(lambda v, x: model.module.apply(v, x, method=method))(model.variables, inputs)


def _draw_codes(
    axes,
    codes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    span: tuple[np.ndarray, np.ndarray],
) -> None:
    """Codes coloured by label, with the decoded grid's span outlined."""
    colours = matplotlib.colormaps[CLASS_CMAP]
    for label in range(num_classes):
        axes.scatter(
            *codes[labels == label].T,
            s=6,
            alpha=0.7,
            color=colours(label % colours.N),
            label=str(label),
        )
    (x0, y0), (x1, y1) = span
    axes.add_patch(
        Rectangle(
            (x0, y0),
            x1 - x0,
            y1 - y0,
            fill=False,
            linestyle="--",
            edgecolor="black",
            label="decoded span",
        )
    )
    axes.legend(title="label", markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    axes.set(xlabel="z1", ylabel="z2")
    axes.grid(alpha=0.3)


def _draw_decodes(axes, model: LoadedModel, low: np.ndarray, high: np.ndarray, grid: int) -> None:
    """The decoder's images for a grid x grid lattice of codes, placed at their codes."""
    z1 = np.linspace(low[0], high[0], grid)
    z2 = np.linspace(high[1], low[1], grid)  # Top row first: z2 grows upwards, as on the left.
    lattice = np.stack(np.meshgrid(z1, z2), axis=-1).reshape(-1, 2).astype(np.float32)
    prep = model.preprocessing
    decoded = np.asarray(_apply(model, "decode", lattice)) * np.asarray(prep.std) + prep.mean
    tiles = np.clip(decoded, 0.0, 1.0)  # Back to [0, 1] intensities from standardised units.
    tiles = tiles[..., 0] if tiles.shape[-1] == 1 else tiles
    half_steps = (high - low) / (grid - 1) / 2
    extent = (
        low[0] - half_steps[0],
        high[0] + half_steps[0],
        low[1] - half_steps[1],
        high[1] + half_steps[1],
    )
    # Mid-grey gaps part the tiles without the glare of white lines between dark digits.
    show_map(
        axes, mosaic(tiles, grid, gap_value=0.5), "gray", 0.0, 1.0, extent=extent, aspect="auto"
    )
    axes.set(xlabel="z1", ylabel="z2", title=f"decoded images over a {grid}x{grid} grid of codes")

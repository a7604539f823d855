"""`zoo checkpoints` and `zoo predict`: the checkpoint registry from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from zoo.data.transforms import centre_crop
from zoo.errors import InvalidValueError
from zoo.hub import CheckpointRecord, list_checkpoints, load, registry_root, shipped_root
from zoo.images import converted, image_batch, is_npy, on_training_background, raw_image, read_npy
from zoo.registry import model_info

PREDICT_BATCH = 256
INVERTED_NOTE = " (light background: inverted to match the dark training images)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the saved checkpoints")
    _add_registry(parser)
    parser.set_defaults(run=run_checkpoints)

    parser = subparsers.add_parser(
        "predict",
        help="classify raw images with a saved checkpoint",
        description="Prints the class id and its probability for every image. FILE is a .npy "
        "of raw uint8 images, (N, H, W[, C]) or one (H, W[, C]), or an image file "
        "(.png, .jpg, ...), converted and resized to the training images' format.",
    )
    parser.add_argument("name", help="the checkpoint name (see 'zoo checkpoints')")
    parser.add_argument(
        "files", nargs="+", metavar="FILE", type=Path, help="a .npy of raw images, or an image file"
    )
    parser.add_argument("--step", type=int, help="the step to load (default: the latest)")
    _add_registry(parser)
    parser.set_defaults(run=run_predict)


def _add_registry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="DIR",
        type=Path,
        help="read only this registry folder (default: yours, $ZOO_REGISTRY or "
        "~/.local/share/jax-zoo/registry, then the shipped models)",
    )


COLUMNS = ("name", "source", "model", "step", "dataset", "metrics", "params", "size", "date (UTC)")


def run_checkpoints(args: argparse.Namespace) -> int:
    records = list_checkpoints(args.registry)
    roots = (
        [registry_root(args.registry)]
        if args.registry is not None
        else [registry_root(), shipped_root()]
    )
    where = " and ".join(map(str, roots))
    if not records:
        print(f"no checkpoints in {where}")
        return 0
    table = Table(title=f"checkpoints in {where}")
    for column in COLUMNS:
        justify = "right" if column in ("step", "params", "size") else "left"
        table.add_column(column, justify=justify, no_wrap=True)
    for record in records:
        table.add_row(*_row(record))
    console = Console()
    if not console.is_terminal:
        console.width = 1_000  # Piped or captured output keeps whole names instead of '…'.
    console.print(table)
    for record in records:
        if record.damaged:
            where = record.name if record.step is None else f"{record.name} step {record.step}"
            print(f"damaged: {where}: {record.damaged}")
    return 0


def _row(record: CheckpointRecord) -> list[str]:
    if record.damaged:
        step = "-" if record.step is None else str(record.step)
        return [record.name, record.source, "-", step, "DAMAGED (see below)"]
    metrics = ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in record.metrics.items()
    )
    return [
        record.name,
        record.source,
        record.model_name,
        str(record.step),
        record.dataset or "-",
        metrics or "-",
        f"{record.params:,}",
        _human_size(record.size_bytes),
        record.created[:16].replace("T", " "),
    ]


def _human_size(size: int) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    power = min(len(str(size)) - 1, 3 * (len(units) - 1)) // 3
    return f"{size} B" if power == 0 else f"{size / 1000**power:.1f} {units[power]}"


def run_predict(args: argparse.Namespace) -> int:
    model = load(args.name, step=args.step, registry=args.registry)
    task = model_info(model.model_name).task
    if task != "classification":
        raise InvalidValueError(
            f"zoo predict needs a classifier; {model.model_name} is a {task} model"
        )
    if model.preprocessing is None:
        raise InvalidValueError(
            f"{args.name} step {model.step} has no recorded preprocessing, so raw "
            "images cannot be turned into its inputs"
        )
    for path in args.files:
        preprocessing = model.preprocessing
        images = read_images(path, preprocessing.source_shape, preprocessing.crop_fraction)
        images, inverted = on_training_background(images, model.preprocessing)
        # In slices: the activations of a whole file's batch could take gigabytes.
        for start in range(0, len(images), PREDICT_BATCH):
            logits = model.logits(images[start : start + PREDICT_BATCH])
            for i, p in enumerate(np.asarray(jax.nn.softmax(logits, axis=-1)), start):
                label = f"{path}[{i}]" if is_npy(path) else str(path)
                note = INVERTED_NOTE if inverted[i] else ""
                print(f"{label}: class {int(p.argmax())} (p={p.max():.3f}){note}")
    return 0


def read_images(
    path: Path, source_shape: tuple[int, int, int], crop_fraction: float | None = None
) -> np.ndarray:
    """A batch (N, *source_shape) of raw uint8 images from a .npy file or one image file.

    A picture is cut to `source_shape` as training cut the held-out images: by the ImageNet
    evaluation transform (resize, centre crop) for a model of natural images of any size (its
    preprocessing's `crop_fraction`), else by a conversion and a bilinear resize.
    """
    if is_npy(path):
        return image_batch(read_npy(path), source_shape, str(path))
    if crop_fraction is not None:
        size, channels = source_shape[:2], source_shape[-1]
        return centre_crop(path, size, crop_fraction=crop_fraction, channels=channels)[None]
    return converted(raw_image(path), source_shape)[None]

"""`zoo checkpoints` and `zoo predict`: the checkpoint registry from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from zoo.data.transforms import centre_crop
from zoo.errors import InvalidValueError
from zoo.hub import (
    CheckpointRecord,
    Prediction,
    list_checkpoints,
    load,
    registry_root,
    shipped_root,
    top_predictions,
)
from zoo.images import converted, image_batch, is_npy, on_training_background, raw_image, read_npy
from zoo.registry import model_info
from zoo.training.step import TOP5_MIN_CLASSES

PREDICT_BATCH = 256
INVERTED_NOTE = " (light background: inverted to match the dark training images)"
# Without --top: the 5 most probable classes of a model of more than 10 (`TOP5_MIN_CLASSES`),
# else the most probable one and any other at least this probable.
RUNNER_UP_MIN_PROBABILITY = 0.1
TOP_CLASSES = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the saved checkpoints")
    _add_registry(parser)
    parser.set_defaults(run=run_checkpoints)

    parser = subparsers.add_parser(
        "predict",
        help="classify raw images with a saved checkpoint",
        description="Prints one line per image: its most probable classes by name, with their "
        "probabilities (`digit.png: 7 (98.1%%)`). FILE is a .npy of raw uint8 images, (N, H, "
        "W[, C]) or one (H, W[, C]), or an image file (.png, .jpg, ...), converted and resized "
        "to the training images' format. Classes are named as the checkpoint records them "
        "(the data set's names, ImageNet's for torchvision weights), else by their ids.",
    )
    parser.add_argument("name", help="the checkpoint name (see 'zoo checkpoints')")
    parser.add_argument(
        "files", nargs="+", metavar="FILE", type=Path, help="a .npy of raw images, or an image file"
    )
    parser.add_argument("--step", type=int, help="the step to load (default: the latest)")
    parser.add_argument(
        "--top",
        type=int,
        metavar="K",
        help=f"print the K most probable classes (default: {TOP_CLASSES} for a model of more "
        f"than {TOP5_MIN_CLASSES - 1} classes; else the most probable one, and any other of at "
        f"least {RUNNER_UP_MIN_PROBABILITY * 100:.0f}%%)",
    )
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
    if args.top is not None and args.top < 1:
        raise InvalidValueError(f"--top must be at least 1, got {args.top}")
    model = load(args.name, step=args.step, registry=args.registry)
    task = model_info(model.model_name).task
    if task != "classification":
        raise InvalidValueError(
            f"zoo predict needs a classifier; {model.model_name} is a {task} model"
        )
    if model.class_names is None:
        raise InvalidValueError(
            f"zoo predict needs a classifier; {args.name} is a headless {model.model_name} "
            "(num_classes=0): it outputs features, not classes"
        )
    if model.preprocessing is None:
        raise InvalidValueError(
            f"{args.name} step {model.step} has no recorded preprocessing, so raw "
            "images cannot be turned into its inputs"
        )
    top = args.top or (TOP_CLASSES if len(model.class_names) >= TOP5_MIN_CLASSES else None)
    for path in args.files:
        preprocessing = model.preprocessing
        images = read_images(path, preprocessing.source_shape, preprocessing.crop_fraction)
        images, inverted = on_training_background(images, model.preprocessing)
        # In slices: the activations of a whole file's batch could take gigabytes.
        for start in range(0, len(images), PREDICT_BATCH):
            probabilities = model.probabilities(images[start : start + PREDICT_BATCH])
            ranked = top_predictions(probabilities, model.class_names, top or TOP_CLASSES)
            for i, predictions in enumerate(ranked, start):
                label = f"{path}[{i}]" if is_npy(path) else str(path)
                note = INVERTED_NOTE if inverted[i] else ""
                print(f"{label}: {_describe(predictions, top)}{note}")
    return 0


def _describe(predictions: list[Prediction], top: int | None) -> str:
    """`7 (98.1%)`, or `golden retriever (81.2%), Labrador retriever (9.3%), ...`: the first
    `top`, or without `top` the first and the others of at least RUNNER_UP_MIN_PROBABILITY."""
    if top is None:
        predictions = predictions[:1] + [
            p for p in predictions[1:] if p.probability >= RUNNER_UP_MIN_PROBABILITY
        ]
    return ", ".join(f"{p.name} ({_percent(p.probability)})" for p in predictions)


def _percent(probability: float) -> str:
    return "<0.1%" if probability < 0.0005 else f"{probability:.1%}"


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

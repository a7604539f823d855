"""LeNet-5 on mnist5k: held-out accuracy over seeds for recipe variants, and a second digit set.

    python bench/lenet5_digits.py                        # the preset, seeds 0-2
    python bench/lenet5_digits.py --seeds 0 1 2 3 4 --variant old --variant preset
    python bench/lenet5_digits.py --variant 'preset:epochs=30,elastic_alpha=0'

Each run is `zoo.training.train("lenet5", ...)` (the preset, then the variant's settings) with
nothing saved. Two accuracies per run, both on digits it never trained on:

- `held_out`: mnist5k's 1,000 held-out real MNIST digits (100 per class), what the logs call
  val_accuracy;
- `sklearn`: scikit-learn's 1,797 8x8 digits (UCI optdigits: other writers, scanned at 32x32
  and averaged to 8x8, 17 grey levels), brought to MNIST's format as MNIST made its own (the
  digit scaled into a 20x20 box, centred by its centre of mass in 28x28). A different
  distribution: its figure is for comparing recipes, not for comparing with MNIST's.

Variants are `NAME` (one of `VARIANTS`) or `NAME:key=value,...` (settings on top of it). Results
go to stdout as one line per run and a summary per variant (mean and range over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
from rich.console import Console

import zoo.training

# Settings on top of lenet5's preset (zoo/training/config.py). "old" is the preset before the
# random warp was added to it: 25 epochs of shifts, label smoothing and mixup.
VARIANTS: dict[str, dict] = {
    "preset": {},
    "old": {"epochs": 25, "rotate": 0.0, "zoom": 0.0, "shear": 0.0},
}


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as MNIST-style 28x28x1 uint8 images, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for image in digits.images:
        ink = PIL.Image.fromarray(np.uint8(np.round(image * 255 / 16)))
        box = np.asarray(ink.resize((20, 20), PIL.Image.Resampling.BILINEAR), np.float32)
        canvas = np.zeros((28, 28), np.float32)
        canvas[4:24, 4:24] = box
        rows, cols = np.indices(canvas.shape)
        total = canvas.sum()
        dy = round(float(13.5 - (rows * canvas).sum() / total))
        dx = round(float(13.5 - (cols * canvas).sum() / total))
        canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
        images.append(np.uint8(np.clip(np.round(canvas), 0, 255)))
    return np.stack(images)[..., None], digits.target.astype(np.int32)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, extra = text.partition(":")
    settings = dict(VARIANTS[name])
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    return text, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", help="NAME[:key=value,...]")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["preset"]]
    other_images, other_labels = sklearn_digits()
    quiet = Console(quiet=True)
    logs = Path(tempfile.mkdtemp(prefix="lenet5-digits-"))
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in variants}
    for seed in args.seeds:  # Seeds outermost: the variants interleave under the same load.
        for name, settings in variants:
            started = time.monotonic()
            run = zoo.training.train(
                "lenet5",
                save=False,
                console=quiet,
                seed=seed,
                log=str(logs / "run.jsonl"),
                tensorboard=False,
                **settings,
            )
            seconds = time.monotonic() - started
            held_out = run.metrics["val_accuracy"]
            other = float(np.mean(run.model.predict(other_images) == other_labels))
            results[name].append((held_out, other, seconds))
            print(
                f"{name} seed {seed}: held_out {held_out:.2%}  sklearn {other:.2%}  "
                f"{seconds:.1f} s",
                flush=True,
            )
    for name, runs in results.items():
        held_out, other, seconds = zip(*runs, strict=True)
        print(
            f"{name}: held_out mean {statistics.mean(held_out):.2%} "
            f"[{min(held_out):.2%}, {max(held_out):.2%}]  sklearn mean "
            f"{statistics.mean(other):.2%} [{min(other):.2%}, {max(other):.2%}]  "
            f"fit {statistics.median(seconds):.1f} s (median), {len(runs)} seeds"
        )


if __name__ == "__main__":
    main()

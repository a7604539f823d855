"""Loader throughput: the zoo's training transform against torchvision's, on the same JPEGs.

    python bench/loader.py --folder /tmp/photos --make 256 --rounds 5

Makes (once, with --make N) a folder of N JPEGs at ImageNet's typical sizes (mostly 500x375,
375x500 and 500x333, some 640x480 to 1024x768) cut from the photos matplotlib and scikit-learn
ship; then, in rounds interleaved A, B, A, B, measures images per second of the training
transform (decode, random-resized crop to 224, flip):

- "zoo 1 core": `zoo.data.sampling`'s reader, one example at a time, in this process;
- "zoo with Pillow draft": the same crops with Pillow's draft mode in place of simplejpeg;
- "torchvision 1 core": `ImageFolder`'s loader and the reference recipe's training transform
  (`RandomResizedCrop(224)`, `RandomHorizontalFlip()`, `PILToTensor()`, `ConvertImageDtype`,
  `Normalize`), which also normalises on the host: the zoo does that on the device;
- "torchvision, uint8" the same without the float conversion and normalisation;
- "zoo Grain, W workers" and "torch DataLoader, W workers": the pipelines with W worker
  processes (started once; in each round 6 batches drained, then 16 timed), batches of 32, per
  worker (images/s / W).

The single-core transforms are measured first, then the pipelines (whose workers would compete
in the background); each phase rotates its order every round. Prints medians and the ratios;
bench/README.md ("Data loading") records them with the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
from sklearn.datasets import load_sample_images

SIZES = (
    [(500, 375)] * 5 + [(375, 500)] * 3 + [(500, 333)] * 2 + [(640, 480), (800, 600), (1024, 768)]
)
BATCH = 32
DRAINED, TIMED = 6, 16  # Batches per round of the pipelines: untimed, then timed.


def make_folder(root: Path, count: int) -> None:
    photos = [
        PIL.Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"),
        *(PIL.Image.fromarray(image) for image in load_sample_images().images),
    ]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)].convert("RGB")
        w, h = SIZES[i % len(SIZES)]
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(photo.width * scale), int(photo.height * scale)
        left, top = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
        image = photo.crop((left, top, left + cw, top + ch)).resize((w, h), PIL.Image.BICUBIC)
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.jpg", quality=90)


def zoo_single(files: list[str]) -> Callable[[], tuple[int, float]]:
    from zoo.data.records import FileRecords
    from zoo.data.sampling import BatchPlan, RandomResizedCrop, TrainReader

    records = FileRecords(tuple(files), np.zeros(len(files), np.int32))
    plan = BatchPlan(0, len(files), BATCH, tuple(range(BATCH)))
    reader = TrainReader(plan, records, RandomResizedCrop((224, 224), 3))
    count = plan.steps_per_epoch * BATCH

    def run() -> tuple[int, float]:
        started = time.perf_counter()
        for position in range(count):
            reader(position)
        return count, time.perf_counter() - started

    return run


def pillow_draft_single(files: list[str]) -> Callable[[], tuple[int, float]]:
    """`zoo_single` with JPEGs decoded by Pillow's draft mode (libjpeg's DCT scaling through
    Pillow) in place of simplejpeg: the alternative `zoo.data.transforms` measured, swapped in
    for the run, everything else the same."""
    from zoo.data import transforms

    def draft(decoder: transforms._Decoder, least: tuple[int, int]) -> PIL.Image.Image:
        mode = "RGB" if decoder.channels == 3 else "L"
        with decoder._pil() as image:
            image.draft(mode, least)
            image.load()
            return transforms._converted(image, mode)

    zoo = zoo_single(files)

    def run() -> tuple[int, float]:
        simplejpeg = transforms._Decoder._decoded
        transforms._Decoder._decoded = draft
        try:
            return zoo()
        finally:
            transforms._Decoder._decoded = simplejpeg

    return run


def torch_single(files: list[str], normalise: bool) -> Callable[[], tuple[int, float]]:
    import torch
    import torchvision.transforms.v2 as T
    from torchvision.datasets.folder import pil_loader

    steps = [T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()]
    if normalise:
        steps += [
            T.ToDtype(torch.float, scale=True),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    transform = T.Compose(steps)

    def run() -> tuple[int, float]:
        started = time.perf_counter()
        for path in files:
            transform(pil_loader(path))
        return len(files), time.perf_counter() - started

    return run


def timed_batches(batches) -> tuple[int, float]:
    """(images, seconds) of `TIMED` batches, after `DRAINED` untimed ones: a pipeline's buffers
    fill while others are measured, so the timed ones are those its workers make meanwhile."""
    for _ in range(DRAINED):
        next(batches)
    started = time.perf_counter()
    for _ in range(TIMED):
        next(batches)
    return TIMED * BATCH, time.perf_counter() - started


def zoo_grain(files: list[str], workers: int) -> Callable[[], tuple[int, float]]:
    """One pipeline for the whole benchmark: its workers start once, as in a run."""
    from zoo.data.records import FileRecords
    from zoo.data.sampling import BatchPlan, RandomResizedCrop, TrainReader
    from zoo.training.streaming import train_batches

    records = FileRecords(tuple(files), np.zeros(len(files), np.int32))
    plan = BatchPlan(0, len(files), BATCH, tuple(range(BATCH)))
    reader = TrainReader(plan, records, RandomResizedCrop((224, 224), 3))
    batches = train_batches(reader, 0, workers)
    return lambda: timed_batches(batches)


def torch_loader(root: Path, workers: int) -> Callable[[], tuple[int, float]]:
    """Persistent workers (started once, as the zoo's), epochs after epochs."""
    import itertools

    import torch
    import torchvision.transforms.v2 as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose(
        [
            T.RandomResizedCrop(224, antialias=True),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
            T.ToDtype(torch.float, scale=True),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    data = ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
        prefetch_factor=4,  # As many batches ahead per worker as Grain's buffers hold.
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    return lambda: timed_batches(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/zoo-bench-photos"))
    parser.add_argument("--make", type=int, default=0, help="make the folder with N images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # One core, as in a DataLoader worker (which sets this itself).
    if args.make:
        make_folder(args.folder, args.make)
    files = sorted(str(p) for p in (args.folder / "train").rglob("*.jpg"))
    w = args.workers
    # Two phases: the pipelines' workers keep filling their buffers in the background, so the
    # single-core transforms are measured before any exists. Within a phase the order rotates.
    single = {
        "zoo, 1 core": zoo_single(files),
        "zoo with Pillow draft, 1 core": pillow_draft_single(files),
        "torchvision, 1 core": torch_single(files, normalise=True),
        "torchvision uint8, 1 core": torch_single(files, normalise=False),
    }
    rates = measure(single, args.rounds, cores=1)
    pipelines = {
        f"zoo Grain, {w} worker(s), per worker": zoo_grain(files, w),
        f"torch DataLoader, {w} worker(s), per worker": torch_loader(args.folder, w),
    }
    rates.update(measure(pipelines, args.rounds, cores=w))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{len(files)} JPEGs, {args.rounds} interleaved rounds, medians (min-max):")
    for name, values in rates.items():
        print(f"  {name:45s} {medians[name]:7.1f} img/s  ({min(values):.1f}-{max(values):.1f})")
    zoo, draft, torch_, torch_uint8, grain, loader = medians.values()
    pairs = zip(rates["zoo, 1 core"], rates["zoo with Pillow draft, 1 core"], strict=True)
    paired = statistics.median(a / b for a, b in pairs)
    print(
        f"simplejpeg / Pillow draft: {zoo / draft:.2f}x (median of per-round ratios {paired:.2f})"
    )
    print(f"zoo / torchvision, 1 core: {zoo / torch_:.2f}x (uint8: {zoo / torch_uint8:.2f}x)")
    print(f"Grain / DataLoader per worker: {grain / loader:.2f}x")


def measure(
    methods: dict[str, Callable[[], tuple[int, float]]], rounds: int, cores: int
) -> dict[str, list[float]]:
    """images/s per core of each method, `rounds` times, the order rotated every round."""
    rates: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            images, seconds = methods[name]()
            rates[name].append(images / seconds / cores)
    return rates


if __name__ == "__main__":
    main()

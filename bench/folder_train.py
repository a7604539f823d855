"""End to end: `zoo train resnet18 --dataset folder:...` against PyTorch with a DataLoader.

    python bench/folder_train.py --folder /tmp/zoo-bench-photos --rounds 2

The folder is `bench/loader.py`'s (ImageNet-sized JPEGs; `--make N` there). Each run trains
ResNet-18 at 224x224 with the ImageNet training transform (random-resized crop, flip), SGD with
momentum, batch 32, for `--epochs` epochs, in its own process on the same cores; images/s and the
fraction of the step time spent waiting for the next batch are those of the last epoch (the
first compiles or warms up). Runs alternate A, B, A, B:

- zoo, streaming: `--data-pipeline streaming`, reading with threads (`--data-workers 0`, the
  default on 2 cores) or `--data-workers W` processes;
- zoo, device: the same folder held decoded on the device, crops in the step (the size rule's
  choice for a folder this small);
- torch: torchvision's `ImageFolder` and reference transform, a `DataLoader` with W workers
  (`persistent_workers`), `resnet18` in channels_last, `torch.optim.SGD`: the loop of
  torchvision's reference `train.py`, timing the wait in `next(loader)`.

Prints one line per run and the medians; bench/README.md ("Data loading") records them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH = r"""
import json, sys, time
import torch, torchvision
import torchvision.transforms.v2 as T
from torchvision.datasets import ImageFolder

folder, epochs, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
transform = T.Compose([
    T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor(),
    T.ToDtype(torch.float, scale=True),
    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
data = ImageFolder(folder + "/train", transform=transform)
loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, drop_last=True,
                                     num_workers=workers, persistent_workers=workers > 0)
model = torchvision.models.resnet18(num_classes=len(data.classes)).to(
    memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
loss_fn = torch.nn.CrossEntropyLoss()
for epoch in range(epochs):
    waited, images, started = 0.0, 0, time.perf_counter()
    batches = iter(loader)
    while True:
        asked = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        waited += time.perf_counter() - asked
        loss = loss_fn(model(x.to(memory_format=torch.channels_last)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(y)
    seconds = time.perf_counter() - started
print(json.dumps({"images_per_second": images / seconds, "data_wait_fraction": waited / seconds}))
"""


def zoo_run(folder: Path, epochs: int, pipeline: str, workers: int, log: Path) -> dict:
    command = [
        sys.executable, "-m", "zoo.cli", "train", "resnet18",
        "--dataset", f"folder:{folder}", "--epochs", str(epochs), "--batch-size", "32",
        "--lr", "0.01", "--weight-decay", "1e-4", "--augment",
        "--data-pipeline", pipeline, "--data-workers", str(workers),
        "--name", f"bench-{pipeline}-{time.monotonic_ns()}", "--log", str(log),
        "--no-tensorboard",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    last = [json.loads(line) for line in log.read_text().splitlines()][-1]
    return {key: last[key] for key in ("images_per_second", "data_wait_fraction")}


def torch_run(folder: Path, epochs: int, workers: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", TORCH, str(folder), str(epochs), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/zoo-bench-photos"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (W)")
    args = parser.parse_args()
    w = args.workers
    runs = {
        "zoo streaming, threads": lambda log: zoo_run(
            args.folder, args.epochs, "streaming", 0, log
        ),
        f"zoo streaming, {w} worker(s)": lambda log: zoo_run(
            args.folder, args.epochs, "streaming", w, log
        ),
        "zoo device": lambda log: zoo_run(args.folder, args.epochs, "device", 0, log),
        "torch DataLoader, main process": lambda log: torch_run(args.folder, args.epochs, 0),
        f"torch DataLoader, {w} worker(s)": lambda log: torch_run(args.folder, args.epochs, w),
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name, run in runs.items():
                result = run(Path(scratch) / f"{round_}-{len(results[name])}.jsonl")
                results[name].append(result)
                print(
                    f"round {round_ + 1}  {name:32s} {result['images_per_second']:6.1f} img/s"
                    f"  waiting for data {result['data_wait_fraction']:.0%}",
                    flush=True,
                )
    print("medians:")
    for name, values in results.items():
        rate = statistics.median(v["images_per_second"] for v in values)
        wait = statistics.median(v["data_wait_fraction"] for v in values)
        print(f"  {name:32s} {rate:6.1f} img/s  waiting for data {wait:.0%}")


if __name__ == "__main__":
    main()

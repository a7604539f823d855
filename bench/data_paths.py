"""The two data paths on a small set: what the size rule keeps on the devices, and why.

    python bench/data_paths.py --rounds 2

`zoo train lenet5` on the embedded mnist5k (4,000 digits, 28x28, translations on the device),
3 epochs of batch 64, with `--data-pipeline device` and `--data-pipeline streaming` (threads, the
2-core default) alternately, each in its own process; images/s and the fraction of the step time
spent waiting for data of the last epoch. Both train bit for bit alike (tests/test_streaming.py).
bench/README.md ("Data loading") records the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(pipeline: str, log: Path) -> dict:
    command = [
        sys.executable, "-m", "zoo.cli", "train", "lenet5", "--epochs", "3",
        "--batch-size", "64", "--data-pipeline", pipeline, "--data-workers", "0",
        "--name", f"paths-{pipeline}-{log.stem}", "--log", str(log), "--no-tensorboard",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    last = [json.loads(line) for line in log.read_text().splitlines()][-1]
    return {key: last[key] for key in ("images_per_second", "data_wait_fraction")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"device": [], "streaming": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for pipeline, values in results.items():
                values.append(run(pipeline, Path(scratch) / f"{pipeline}{round_}.jsonl"))
                print(
                    f"round {round_ + 1}  {pipeline:9s} {values[-1]['images_per_second']:8.0f}"
                    f" img/s  waiting for data {values[-1]['data_wait_fraction']:.0%}",
                    flush=True,
                )
    rates = {p: statistics.median(v["images_per_second"] for v in r) for p, r in results.items()}
    print(
        f"medians: device {rates['device']:.0f} img/s, streaming {rates['streaming']:.0f} "
        f"img/s: device / streaming {rates['device'] / rates['streaming']:.1f}x"
    )


if __name__ == "__main__":
    main()

"""Where a train step's time goes: each oneDNN primitive a step of the zoo and a step of PyTorch
run, timed by oneDNN itself, side by side.

    python bench/kernel_time.py resnet18 [--precision bf16] [--steps 8]

Each framework runs in a process of its own, `ONEDNN_VERBOSE=1` set before oneDNN loads: the
loops of `bench/compare.py` (the zoo's jitted `train_step`; PyTorch eager, channels_last, under
`torch.autocast` for bf16). The verbose lines of every step after the first three are summed
per primitive, direction and shape, then divided by the steps: milliseconds per step, against
the same steps' mean time.

In the zoo's process two oneDNN libraries report: the extension's (`zoo.ops`) and the one
jaxlib links for some of XLA's own matmuls ("XLA" in the table). The zoo's other kernels (max
pool, residual join) and XLA's fusions are not oneDNN primitives: the step's time less oneDNN's
busy time is theirs and the framework's. XLA runs independent operations concurrently, so the
calls' sum can exceed their busy time (the union of their intervals), which the totals give too.
Verbose output costs time itself: compare the step times with `bench/compare.py`'s, not these.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

STEP_MARK = "kernel_time_step"
WARMUP_STEPS = 3


def run_steps(framework: str, model: str, precision: str, steps: int) -> None:
    """The child: `steps` train steps of `framework`, each followed by a marker line."""
    import compare

    spec = compare.SPECS[model]
    images, labels = compare.make_batch(spec)
    if framework == "zoo":
        runner = compare.JaxRunner(spec, images, labels, precision)
    else:
        compare.torch.set_num_threads(os.cpu_count() or 1)
        runner = compare.TorchRunner(spec, images, labels, "channels_last", precision)
    for _ in range(steps):
        start = time.perf_counter()
        runner.train(1)
        # oneDNN flushes stdout after each verbose line, so the order holds.
        print(f"{STEP_MARK},{1e3 * (time.perf_counter() - start):.3f}", flush=True)


class Call:
    """One verbose `exec` line: oneDNN 3.2 (`onednn_verbose,[stamp,]exec,...`) or 3.3+
    (`onednn_verbose,v1,[stamp,]primitive,exec,...`)."""

    def __init__(self, line: str):
        fields = line.split(",")
        at = fields.index("exec")
        self.library = "v1" if fields[1] == "v1" else "v0"
        stamps = fields[2:3] if self.library == "v1" else fields[1:2]
        self.start = float(stamps[0]) if stamps and stamps[0][:1].isdigit() else None
        self.kind, self.implementation, self.direction = fields[at + 2 : at + 5]
        self.shape, self.ms = fields[-2], float(fields[-1])


def profile(framework: str, model: str, precision: str, steps: int) -> tuple[list, list[float]]:
    """(the calls of the measured steps, every step's ms) from a child process."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "ONEDNN_VERBOSE_TIMESTAMP": "1"}
    command = [sys.executable, __file__, model, "--precision", precision, "--steps", str(steps)]
    output = subprocess.run(
        [*command, "--child", framework], env=env, capture_output=True, text=True, check=True
    ).stdout
    calls, step_ms, step = [], [], 0
    for line in output.splitlines():
        if line.startswith(STEP_MARK):
            step_ms.append(float(line.split(",")[1]))
            step += 1
        elif line.startswith("onednn_verbose") and ",exec," in line and step >= WARMUP_STEPS:
            calls.append(Call(line))
    return calls, step_ms


def busy_ms(calls: list[Call]) -> float:
    """The union of the calls' intervals."""
    intervals = sorted((c.start, c.start + c.ms) for c in calls if c.start is not None)
    total, end = 0.0, float("-inf")
    for start, stop in intervals:
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def source(framework: str, call: Call) -> str:
    if framework == "zoo" and call.library == "v1":
        return "XLA"
    return framework


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model",
        choices=[
            "lenet5",
            "resnet20",
            "resnet18",
            "vgg16",
            "resnext50_32x4d",
            "densenet121",
            "mobilenet_v3_large",
            "efficientnet_b0",
        ],
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=8, help=f"of which {WARMUP_STEPS} warm-up")
    parser.add_argument("--child", choices=["zoo", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    if args.child:
        run_steps(args.child, args.model, args.precision, args.steps)
        return 0

    measured = args.steps - WARMUP_STEPS
    rows: dict[tuple[str, str, str], dict[str, list[Call]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    summary = {}
    for framework in ("zoo", "torch"):
        calls, step_ms = profile(framework, args.model, args.precision, args.steps)
        for call in calls:
            rows[(call.kind, call.direction, call.shape)][source(framework, call)].append(call)
        summary[framework] = (
            statistics.mean(step_ms[WARMUP_STEPS:]),
            sum(c.ms for c in calls) / measured,
            busy_ms(calls) / measured,
        )

    columns = ("zoo", "XLA", "torch")
    print(f"{args.model} {args.precision}: oneDNN's ms per step (calls per step, implementation)")
    print("| primitive | direction | shape | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---:|" * len(columns))
    for (kind, direction, shape), by_source in sorted(rows.items()):
        cells = []
        for column in columns:
            calls = by_source.get(column, [])
            if not calls:
                cells.append("")
                continue
            ms = sum(c.ms for c in calls) / measured
            cells.append(f"{ms:.1f} ({len(calls) / measured:g}, {calls[0].implementation})")
        print(f"| {kind} | {direction} | {shape} | " + " | ".join(cells) + " |")
    for framework, (step, total, busy) in summary.items():
        print(
            f"{framework}: step {step:.1f} ms (mean); oneDNN {total:.1f} ms summed, "
            f"{busy:.1f} busy; outside oneDNN {step - busy:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

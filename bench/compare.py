"""jax-zoo against PyTorch on this machine, side by side, in one process.

    python bench/compare.py --json OUT.json [--models lenet5,resnet20,resnet18,...]
    python bench/compare.py --json OUT.json --models vgg16,resnext50_32x4d,densenet121
                            [--precisions fp32,bf16] [--quick]

For each model it times the project's own jitted train step (`zoo.training.step.train_step`,
the state donated, SGD momentum 0.9 + weight decay from `zoo.training.state.make_optimizer`)
and the same network in PyTorch (`bench/torch_models.py`: same architecture, same parameter
count, asserted), on the same batch, with the same optimizer and the same number of threads;
then the forward pass in eval mode (inference). fp32 rows first, then bf16 rows
("<model>/bf16"): the zoo's model with `dtype=bfloat16` (float32 parameters, optimizer state
and loss, as `--precision bf16`) against PyTorch under `torch.autocast("cpu", torch.bfloat16)`.
Short timed blocks of steps of the two alternate (JAX first in even rounds, PyTorch first in
odd ones), so a machine shared with other jobs slows both in the same periods. PyTorch runs in
its best CPU configuration: eager, in whichever memory format (channels_last or contiguous) was
faster in warm-up (`--torch-format` to force one).

JSON `rows`, exactly these keys: model, batch, jax_img_s, torch_img_s, ratio (jax / torch),
compile_s (tracing + XLA compilation of our step or forward), gflops (achieved by our step: 6 x
the analytic forward MACs of `zoo.summary` per image when training, 2 x for inference) and
roof_fraction (gflops / the fp32 2048x2048 matmul that XLA runs in the same process). Each
throughput is the median over rounds of a block's steps per second; inference rows are labelled
"<model>/infer". `rows_best` has the same rows from each framework's best round (against the
best matmul sample): on a shared machine, what each does when it has the cores, because
PyTorch's OpenMP threads lose far more than XLA's thread pool when a core is taken away.
Other sections: machine, versions, settings, roof, details (per row: quartiles, per-round
ratios, steps per block, PyTorch's memory format), resnet152_compile and cli_train.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_models  # noqa: E402

import zoo  # noqa: E402
from zoo.training.config import TrainConfig  # noqa: E402
from zoo.training.experiment import COMPUTE_DTYPES  # noqa: E402
from zoo.training.state import create_train_state, make_optimizer  # noqa: E402
from zoo.training.step import train_step  # noqa: E402

zoo.configure_cpu()  # as `zoo train` does: before any JAX backend exists

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    batch: int
    shape: tuple[int, int, int]  # (height, width, channels)
    num_classes: int


SPECS = {
    "lenet5": Spec("lenet5", 128, (32, 32, 1), 10),
    "resnet20": Spec("resnet20", 128, (32, 32, 3), 10),
    "resnet18": Spec("resnet18", 32, (224, 224, 3), 1000),
    "vgg16": Spec("vgg16", 8, (224, 224, 3), 1000),
    "resnext50_32x4d": Spec("resnext50_32x4d", 16, (224, 224, 3), 1000),
    "densenet121": Spec("densenet121", 16, (224, 224, 3), 1000),
    "mobilenet_v3_large": Spec("mobilenet_v3_large", 32, (224, 224, 3), 1000),
    "efficientnet_b0": Spec("efficientnet_b0", 16, (224, 224, 3), 1000),
    "convnext_tiny": Spec("convnext_tiny", 16, (224, 224, 3), 1000),
    "vit_b_16": Spec("vit_b_16", 8, (224, 224, 3), 1000),
}


@dataclasses.dataclass
class Settings:
    rounds: int  # interleaved JAX/PyTorch rounds measured, after warm-up
    block_s: float  # target seconds per timed block (whole steps, at least one)
    warmup: int  # untimed steps of each framework before measuring
    torch_format: str  # channels_last, contiguous, or best (chosen in warm-up)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def quartiles(values: list[float]) -> list[float]:
    return [float(v) for v in np.percentile(values, [25, 50, 75])]


# --- The matmul roof -----------------------------------------------------------------------------


class Roof:
    """fp32 (n x n) @ (n x n) in XLA, sampled between the models' rounds; the roof is the median."""

    def __init__(self, n: int = 2048):
        rng = np.random.default_rng(0)
        self.n = n
        self.a = jnp.asarray(rng.standard_normal((n, n), np.float32))
        self.b = jnp.asarray(rng.standard_normal((n, n), np.float32))
        self.matmul = jax.jit(jnp.matmul)
        jax.block_until_ready(self.matmul(self.a, self.b))
        self.samples: list[float] = []

    def sample(self, repeats: int = 3) -> None:
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(self.matmul(self.a, self.b))
            self.samples.append(2 * self.n**3 / (time.perf_counter() - start) / 1e9)

    @property
    def gflops(self) -> float:
        return median(self.samples)


# --- The two frameworks' steps -------------------------------------------------------------------


def make_batch(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((spec.batch, *spec.shape), np.float32)
    labels = rng.integers(0, spec.num_classes, spec.batch).astype(np.int32)
    return images, labels


def count_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


class JaxRunner:
    """Our train step and eval forward, jitted once; the state lives on the device."""

    def __init__(self, spec: Spec, images: np.ndarray, labels: np.ndarray, precision: str):
        self.model = zoo.create_model(
            spec.name, num_classes=spec.num_classes, dtype=COMPUTE_DTYPES[precision]
        )
        config = TrainConfig(
            model=spec.name,
            precision=precision,
            batch_size=spec.batch,
            optimizer="sgd",
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            epochs=1,
        )
        tx = make_optimizer(config, steps_per_epoch=1000)
        self.state = create_train_state(self.model, tx, spec.shape, jax.random.key(0))
        self.batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
        self.params = count_params(self.state.params)

        start = time.perf_counter()
        step = jax.jit(train_step, donate_argnums=0)
        self.step = step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start

        def forward(variables: Any, image: jax.Array) -> jax.Array:
            return self.model.apply(variables, image, train=False)

        start = time.perf_counter()
        self.forward = jax.jit(forward).lower(self.state.variables, self.batch["image"]).compile()
        self.forward_compile_s = time.perf_counter() - start
        self.metrics: Any = None

    def train(self, steps: int) -> None:
        state, batch, metrics = self.state, self.batch, None
        for _ in range(steps):
            state, metrics = self.step(state, batch)
        jax.block_until_ready((state, metrics))
        self.state, self.metrics = state, metrics

    def infer(self, steps: int) -> None:
        variables, image, logits = self.state.variables, self.batch["image"], None
        for _ in range(steps):
            logits = self.forward(variables, image)
        jax.block_until_ready(logits)


class TorchRunner:
    """The same network, optimizer and batch in eager PyTorch."""

    def __init__(
        self,
        spec: Spec,
        images: np.ndarray,
        labels: np.ndarray,
        memory_format: str,
        precision: str,
    ):
        torch.manual_seed(0)
        self.bf16 = precision == "bf16"
        self.model = torch_models.create(spec.name, spec.num_classes)
        self.params = torch_models.trainable_params(self.model)
        # Decay on weights only, like zoo.training.state.decay_mask (none on biases, norm
        # scales, layer scales, ViT's class token and position embeddings).
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(torch_models.NO_DECAY)]
        no_decay = [p for n, p in named if p.ndim <= 1 or n.endswith(torch_models.NO_DECAY)]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay}],
            lr=LR,
            momentum=MOMENTUM,
        )
        self.nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.set_format(memory_format)

    def set_format(self, memory_format: str) -> None:
        self.memory_format = memory_format
        fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.images = self.nchw.contiguous(memory_format=fmt)

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                logits = self.model(self.images)
                loss = torch.nn.functional.cross_entropy(logits, self.labels)
            loss.backward()
            self.optimizer.step()
            # What our step also returns: the loss sum and the correct count.
            _ = (loss.detach() * len(self.labels), (logits.argmax(-1) == self.labels).sum())

    def infer(self, steps: int) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for _ in range(steps):
                self.model(self.images)

    def autocast(self) -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)


# --- Measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[int], None], steps: int) -> float:
    """Seconds per step of `fn(steps)` (which returns only when its work is done)."""
    start = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - start) / steps


def steps_per_block(fn: Callable[[int], None], block_s: float) -> tuple[int, float]:
    per_step = timed(fn, 1)
    return max(1, round(block_s / per_step)), per_step


def interleave(
    ours: Callable[[int], None],
    theirs: Callable[[int], None],
    settings: Settings,
    roof: Roof,
) -> dict[str, Any]:
    """Alternating timed blocks of both; returns seconds per step of each, per round."""
    for _ in range(settings.warmup):
        ours(1)
        theirs(1)
    n_ours, _ = steps_per_block(ours, settings.block_s)
    n_theirs, _ = steps_per_block(theirs, settings.block_s)
    jax_s, torch_s = [], []
    for round_ in range(settings.rounds):
        order = [("jax", ours, n_ours), ("torch", theirs, n_theirs)]
        for name, fn, steps in order if round_ % 2 == 0 else order[::-1]:
            # One untimed step first: the first step after the other framework ran is slower
            # (measured here for PyTorch: ResNet-20's step and ResNet-18's forward ~20%), and a
            # training run never switches.
            fn(1)
            (jax_s if name == "jax" else torch_s).append(timed(fn, steps))
        roof.sample(1)
    return {"jax_s": jax_s, "torch_s": torch_s, "steps": [n_ours, n_theirs]}


def choose_torch_format(
    runner: TorchRunner, mode: str, settings: Settings, task: str
) -> dict[str, float]:
    """Warm-up steps/s of `task` in each memory format (median of 3 blocks); keeps the faster."""
    if mode != "best":
        runner.set_format(mode)
        return {}
    speeds = {}
    for memory_format in ("channels_last", "contiguous"):
        runner.set_format(memory_format)
        fn = getattr(runner, task)
        fn(max(1, settings.warmup))
        n, _ = steps_per_block(fn, settings.block_s / 2)
        speeds[memory_format] = 1 / median([timed(fn, n) for _ in range(3)])
    runner.set_format(max(speeds, key=speeds.__getitem__))
    return speeds


def row(
    label: str,
    spec: Spec,
    timing: dict[str, Any],
    compile_s: float,
    flops_per_image: float,
    roof: Roof,
    statistic: Callable[[list[float]], float] = median,
) -> dict[str, Any]:
    """One table row; `statistic` reduces the seconds per step of the rounds (median, min)."""
    jax_img_s = spec.batch / statistic(timing["jax_s"])
    torch_img_s = spec.batch / statistic(timing["torch_s"])
    gflops = jax_img_s * flops_per_image / 1e9
    return {
        "model": label,
        "batch": spec.batch,
        "jax_img_s": round(jax_img_s, 2),
        "torch_img_s": round(torch_img_s, 2),
        "ratio": round(jax_img_s / torch_img_s, 3),
        "compile_s": round(compile_s, 2),
        "gflops": round(gflops, 1),
        "roof_fraction": round(gflops / roof.gflops, 3),
    }


def details(spec: Spec, timing: dict[str, Any]) -> dict[str, Any]:
    return {
        "jax_img_s_quartiles": [round(spec.batch / s, 2) for s in quartiles(timing["jax_s"])[::-1]],
        "torch_img_s_quartiles": [
            round(spec.batch / s, 2) for s in quartiles(timing["torch_s"])[::-1]
        ],
        "round_ratios": [
            round(t / j, 3) for j, t in zip(timing["jax_s"], timing["torch_s"], strict=True)
        ],
        "steps_per_block": {"jax": timing["steps"][0], "torch": timing["steps"][1]},
        "rounds": len(timing["jax_s"]),
    }


def bench_model(
    spec: Spec, precision: str, settings: Settings, roof: Roof, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(rows of medians, rows of each framework's best round, details) of one model."""
    images, labels = make_batch(spec)
    ours = JaxRunner(spec, images, labels, precision)
    theirs = TorchRunner(spec, images, labels, "channels_last", precision)
    label = spec.name if precision == "fp32" else f"{spec.name}/{precision}"
    if ours.params != theirs.params:
        raise AssertionError(
            f"{spec.name}: {ours.params:,} parameters in JAX but {theirs.params:,} in PyTorch"
        )
    log(f"{label}: {ours.params:,} parameters in both; compiled in {ours.compile_s:.1f} s")
    macs = zoo.summary(spec.name, spec.shape, num_classes=spec.num_classes).total_macs
    formats, warmup_speeds = {}, {}
    timings = {}
    for task in ("train", "infer"):
        speeds = choose_torch_format(theirs, settings.torch_format, settings, task)
        formats[task] = theirs.memory_format
        warmup_speeds[task] = {k: round(spec.batch * v, 2) for k, v in speeds.items()}
        timings[task] = interleave(getattr(ours, task), getattr(theirs, task), settings, roof)
    train, infer = timings["train"], timings["infer"]
    rows = [
        row(label, spec, train, ours.compile_s, 6 * macs, roof, statistic)
        for statistic in (median, min)
    ] + [
        row(f"{label}/infer", spec, infer, ours.forward_compile_s, 2 * macs, roof, statistic)
        for statistic in (median, min)
    ]
    rows = [rows[0], rows[2], rows[1], rows[3]]  # medians (train, infer), then bests
    extra = {
        label: {
            **details(spec, train),
            "torch_memory_format": formats["train"],
            "torch_format_warmup_img_s": warmup_speeds["train"],
            "params": ours.params,
            "forward_macs_per_image": macs,
        },
        f"{label}/infer": {
            **details(spec, infer),
            "torch_memory_format": formats["infer"],
            "torch_format_warmup_img_s": warmup_speeds["infer"],
        },
    }
    for r in rows[:2]:
        log(
            f"  {r['model']}: JAX {r['jax_img_s']:.1f} img/s, PyTorch {r['torch_img_s']:.1f}, "
            f"ratio {r['ratio']:.2f}, {r['gflops']:.0f} GFLOP/s"
        )
    return rows[:2], rows[2:], extra


# --- Compile time of ResNet-152 and the README's training job -----------------------------------


def resnet152_compile(batch: int = 4) -> dict[str, Any]:
    """Tracing + lowering, then XLA compilation, of ResNet-152's train step (b4, 224x224x3)."""
    model = zoo.create_model("resnet152")
    config = TrainConfig(model="resnet152", batch_size=batch, lr=LR, epochs=1)
    tx = make_optimizer(config, steps_per_epoch=1000)
    abstract_state = jax.eval_shape(
        lambda key: create_train_state(model, tx, (224, 224, 3), key), jax.random.key(0)
    )
    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    start = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(abstract_state, batch_spec)
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {
        "batch": batch,
        "trace_lower_s": round(traced - start, 2),
        "xla_compile_s": round(done - traced, 2),
        "total_s": round(done - start, 2),
    }


def zoo_command() -> list[str]:
    exe = shutil.which("zoo", path=str(Path(sys.executable).parent)) or shutil.which("zoo")
    return [exe] if exe else [sys.executable, "-m", "zoo.cli"]


def cli_train(quick: bool) -> dict[str, Any]:
    """`zoo train lenet5` end to end in a subprocess: without a compilation cache, then twice
    with one persistent cache folder (cold, then warm).

    Each run gets its own temporary registry, log and working folder. The cache is switched on
    through the environment, both the zoo's (`ZOO_COMPILATION_CACHE_DIR`, read where the CLI
    calls `zoo.runtime.enable_compilation_cache`) and JAX's own (`JAX_COMPILATION_CACHE_DIR`,
    every compilation cached), so the runs show what the cache saves either way.
    """
    command = zoo_command()
    probe = subprocess.run([*command, "train", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"available": False, "reason": (probe.stderr or probe.stdout).strip()[-300:]}
    extra = ["--epochs", "1"] if quick else []
    result: dict[str, Any] = {"available": True, "command": " ".join(["zoo train lenet5", *extra])}
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        cache = str(Path(tmp) / "xla-cache")
        with_cache = {
            "ZOO_COMPILATION_CACHE_DIR": cache,
            "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        runs = {
            "no_cache": {"ZOO_COMPILATION_CACHE": "0"},
            "cold_cache": with_cache,
            "warm_cache": with_cache,
        }
        for run, cache_env in runs.items():
            work = Path(tmp) / run
            work.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
            env.update(cache_env, ZOO_REGISTRY=str(work / "registry"))
            argv = [
                *command,
                "train",
                "lenet5",
                *extra,
                "--registry",
                str(work / "registry"),
                "--log",
                str(work / "log.jsonl"),
            ]
            start = time.perf_counter()
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            result[run] = {"wall_s": round(wall, 2), "returncode": done.returncode}
            output = done.stdout if done.returncode == 0 else done.stderr
            result[run]["output_tail"] = output.strip()[-300:]
    return result


# --- Reporting -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return info


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchvision"]
    found = {name: md.version(name) for name in names}
    return {"python": platform.python_version(), **found}


def print_table(rows: list[dict[str, Any]], roof: float, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in (
        "model",
        "batch",
        "JAX img/s",
        "PyTorch img/s",
        "ratio",
        "compile s",
        "GFLOP/s",
        "of roof",
    ):
        table.add_column(header, justify="left" if header == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"],
            str(r["batch"]),
            f"{r['jax_img_s']:,.1f}",
            f"{r['torch_img_s']:,.1f}",
            f"{r['ratio']:.2f}",
            f"{r['compile_s']:.1f}",
            f"{r['gflops']:.0f}",
            f"{100 * r['roof_fraction']:.0f}%",
        )
    Console(width=120).print(table)
    print(f"roof: fp32 2048x2048 matmul in XLA, {roof:.0f} GFLOP/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument(
        "--models",
        default="lenet5,resnet20,resnet18,mobilenet_v3_large,efficientnet_b0",
        help=f"comma-separated, from {', '.join(SPECS)}",
    )
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="comma-separated, from fp32, bf16"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: few short rounds, 1-epoch CLI job (a few minutes)",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per row (default 15; 3)")
    parser.add_argument("--block-s", type=float, help="seconds per timed block (default .25; .2)")
    parser.add_argument(
        "--torch-format",
        choices=("best", "channels_last", "contiguous"),
        help="PyTorch memory format (default best: faster in warm-up; quick: channels_last)",
    )
    parser.add_argument("--skip-resnet152", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SPECS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - set(COMPUTE_DTYPES):
        parser.error(f"--precisions: choose from {', '.join(COMPUTE_DTYPES)}")
    settings = Settings(
        rounds=args.rounds or (3 if args.quick else 15),
        block_s=args.block_s or (0.2 if args.quick else 0.25),
        warmup=1 if args.quick else 2,
        torch_format=args.torch_format or ("channels_last" if args.quick else "best"),
    )

    def log(message: str) -> None:
        print(message, flush=True)

    # The bench measures compilation: never read it from a persistent cache.
    jax.config.update("jax_enable_compilation_cache", False)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "settings": dataclasses.asdict(settings),
        "rows": [],
        "rows_best": [],
        "details": {},
    }
    log(
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"XLA_FLAGS={report['machine']['xla_flags']!r}"
    )
    roof = Roof()
    roof.sample(5)
    for precision in precisions:
        for name in models:
            rows, best, extra = bench_model(SPECS[name], precision, settings, roof, log)
            report["rows"].extend(rows)
            report["rows_best"].extend(best)
            report["details"].update(extra)
    report["roof"] = {
        "what": "fp32 2048x2048 matmul, jax.jit(jnp.matmul)",
        "gflops_median": round(roof.gflops, 1),
        "gflops_best": round(max(roof.samples), 1),
        "samples": len(roof.samples),
    }
    # Rows were computed against the running median; recompute against the final roof.
    for r in report["rows"]:
        r["roof_fraction"] = round(r["gflops"] / roof.gflops, 3)
    for r in report["rows_best"]:
        r["roof_fraction"] = round(r["gflops"] / max(roof.samples), 3)
    if not args.skip_resnet152:
        log("compiling the ResNet-152 train step (b4, 224x224)...")
        report["resnet152_compile"] = resnet152_compile()
        log(f"  {report['resnet152_compile']}")
    if not args.skip_cli:
        log("running `zoo train lenet5` in a subprocess...")
        report["cli_train"] = cli_train(args.quick)
        log(f"  {report['cli_train']}")
    report["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = round(time.time() - started, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    cores = report["machine"]["cores"]
    print_table(report["rows_best"], max(roof.samples), f"best round of each, {cores} CPU cores")
    print_table(report["rows"], roof.gflops, f"jax-zoo vs PyTorch, medians, {cores} CPU cores")
    log(f"wrote {args.json} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

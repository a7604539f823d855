"""jax-zoo against PyTorch on one GPU: training throughput, MFU and compile times, in one process.

    JAX_PLATFORMS=cuda python bench/gpu.py [--out FILE] [--budget-s 420]
    python bench/gpu.py --tiny --out /tmp/tiny.json      # the same code paths on a CPU

Rows, in order of importance (a row is skipped, and listed as skipped, once the budget is spent):
ResNet-50 at batch 256, 224x224x3, 1000 classes; the CIFAR ResNet-20 at batch 512, 32x32x3;
LeNet-5 at batch 512, 32x32x1 (the same batch as ResNet-20: both are CIFAR/MNIST-sized nets,
where a small batch would only time kernel launches). Each in two precisions:

- bf16: the zoo model with `dtype=jnp.bfloat16` (bfloat16 compute, float32 parameters, float32
  optimizer state and loss); PyTorch under `torch.autocast(dtype=torch.bfloat16)`, float32
  parameters.
- tf32: float32 everywhere, TF32 allowed for every float32 matmul and convolution, in both
  frameworks and in every row: JAX traces under `jax.default_matmul_precision("tensorfloat32")`,
  PyTorch sets `torch.backends.cuda.matmul.fp32_precision = "tf32"` and
  `torch.backends.cudnn.conv.fp32_precision = "tf32"` (the torch >= 2.9 spelling of
  `allow_tf32 = True`; the two spellings must not be mixed).

Two JAX steps per row, on the same device-resident synthetic batch:

- trainer: the zoo's own `zoo.training.step.train_step` on `create_train_state` with
  `make_optimizer` (SGD momentum 0.9, decay 5e-4 on weights only), jitted with the state donated.
- plain: what a user writes around `zoo.create_model`: `model.init`, an optax chain of the same
  SGD, one `jax.jit` step with params, batch statistics and optimizer state donated.

PyTorch: the same network (`bench/torch_models.py`, torchvision for ResNet-50; parameter counts
asserted equal), the same optimizer (fused SGD on CUDA), channels_last, `cudnn.benchmark`. For
the bf16 rows `torch.compile` (default mode) is tried too, its compile timed (the wall time of
the first compiled step); the faster of compiled and eager in warm-up is timed, and a compile
that raises falls back to eager with the error recorded. The tf32 rows run eager
(`--torch-compile all` tries it there too).

Timing: after compilation and warm-up, rounds of timed blocks (whole steps, ~`block_s` each,
each block preceded by one untimed step) of the three steps, in an order rotated every round;
each throughput is the median over rounds of a block's images per second; every block ends in
`jax.block_until_ready` / `torch.cuda.synchronize`. MFU: 6 x the analytic forward MACs of
`zoo.summary` per image (forward + backward) times images per second, over the bf16 matmul rate
measured first in the same process (an 8192^3 bf16 matmul in JAX, median of samples taken
before and after the rows). The TF32 matmul rate is measured and recorded too.

JSON: device, versions, settings, roofs, rows (model, precision, step, batch, image,
zoo_img_s, torch_img_s, ratio = zoo / torch, mfu, train_flops_per_image, zoo_compile_s,
torch_compile_s (null unless a compile was tried and worked), torch_mode (what was timed),
torch_compile (what happened to the compile)), details (per-round seconds per step, steps per
block, final losses), skipped (rows the budget left out), failed (rows that raised: the error;
the exit status is then 1), wall_s. The JSON is rewritten after every row, so a run cut short
keeps the rows it finished. The Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

# JAX preallocates 75% of the GPU by default, which would leave PyTorch, in the same process,
# too little for ResNet-50 at batch 256 in float32. A value the user set wins.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch_models  # noqa: E402

import zoo  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
COMPUTE_DTYPES = {"bf16": jnp.bfloat16, "tf32": jnp.float32}
TORCH_COMPILE_RESERVE_S = 120  # no torch.compile is started with less of the budget left


def import_trainer() -> tuple[ModuleType, ModuleType, ModuleType]:
    """zoo.training.{config, state, step}, without running zoo/training/__init__.py.

    That `__init__` imports `fit` and `evaluate_saved`, and through `zoo.training.evaluate` ->
    `zoo.data` -> `zoo.data.sets` the package `tensorflow_datasets`, which the GPU image lacks;
    the three modules themselves need only flax and optax. The package is registered from its
    spec, unexecuted, so that its submodules import normally.
    """
    if "zoo.training" not in sys.modules:
        spec = importlib.util.find_spec("zoo.training")
        if spec is None:
            raise ImportError("zoo.training not found")
        sys.modules["zoo.training"] = importlib.util.module_from_spec(spec)
    names = ("config", "state", "step")
    config, state, step = (importlib.import_module(f"zoo.training.{name}") for name in names)
    return config, state, step


training_config, training_state, training_step = import_trainer()


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    batch: int
    shape: tuple[int, int, int]  # (height, width, channels)
    num_classes: int


SPECS = {
    "resnet50": Spec("resnet50", 256, (224, 224, 3), 1000),
    "resnet20": Spec("resnet20", 512, (32, 32, 3), 10),
    "lenet5": Spec("lenet5", 512, (32, 32, 1), 10),
}
PRECISIONS = ("bf16", "tf32")
ROWS = tuple((name, precision) for name in SPECS for precision in PRECISIONS)

# --tiny: every code path on CPU in seconds: both precisions, both JAX steps, the torchvision
# twin (ResNet-18 stands in for ResNet-50, whose train step compiles for over a minute on 2
# cores) and the hand-written ones. bfloat16 convolutions are slow to compile and run on CPU,
# hence one precision per tiny model.
TINY_SPECS = {
    "resnet18": Spec("resnet18", 2, (32, 32, 3), 10),
    "resnet20": Spec("resnet20", 2, (8, 8, 3), 10),
    "lenet5": Spec("lenet5", 2, (32, 32, 1), 10),
}
TINY_ROWS = (("resnet18", "tf32"), ("resnet20", "bf16"), ("lenet5", "tf32"))


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int  # interleaved rounds of timed blocks, after warm-up
    block_s: float  # target seconds per timed block (whole steps, at least one)
    max_steps: int  # steps per block at most
    warmup: int  # untimed steps of each step function before timing
    matmul_n: int  # side of the square matmuls that measure the roofs
    torch_compile: str  # bf16, all or off: the rows where torch.compile is tried
    budget_s: float  # rows start only while the run is inside this many seconds


FULL = Settings(5, 0.4, 2000, 3, 8192, "bf16", 420.0)
TINY = Settings(2, 0.0, 2, 1, 256, "off", 120.0)


class Budget:
    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


@contextmanager
def tf32_allowed() -> Iterator[None]:
    """JAX's side of TF32: float32 matmuls and convolutions traced here may use TF32."""
    with jax.default_matmul_precision("tensorfloat32"):
        yield


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (a tiny CPU run's rates are ~1e-3)."""
    return float(f"{value:.{digits}g}")


def count_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --- The matmul roofs ----------------------------------------------------------------------------


def matmul_tflops(n: int, dtype: Any, samples: int = 5, chain: int = 10) -> list[float]:
    """TFLOP/s of `chain` back-to-back (n x n) @ (n x n) matmuls in JAX, once per sample."""
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(key, (n, n), dtype) for key in keys)
    with tf32_allowed():
        matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    rates = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(chain):
            c = matmul(a, b)
        jax.block_until_ready(c)
        rates.append(2 * n**3 * chain / (time.perf_counter() - start) / 1e12)
    return rates


# --- The steps timed -----------------------------------------------------------------------------


def make_batch(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((spec.batch, *spec.shape), np.float32)
    labels = rng.integers(0, spec.num_classes, spec.batch).astype(np.int32)
    return images, labels


def create_model(spec: Spec, precision: str) -> Any:
    return zoo.create_model(
        spec.name, num_classes=spec.num_classes, dtype=COMPUTE_DTYPES[precision]
    )


class TrainerStep:
    """The zoo's own train step, as `zoo train` runs it: jitted once, the state donated."""

    def __init__(self, spec: Spec, precision: str, images: np.ndarray, labels: np.ndarray):
        config = training_config.TrainConfig(
            model=spec.name,
            batch_size=spec.batch,
            optimizer="sgd",
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            epochs=1,
        )
        tx = training_state.make_optimizer(config, steps_per_epoch=1000)
        model = create_model(spec, precision)
        self.state = training_state.create_train_state(model, tx, spec.shape, jax.random.key(0))
        self.params = count_params(self.state.params)
        self.batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
        start = time.perf_counter()
        with tf32_allowed():
            lowered = jax.jit(training_step.train_step, donate_argnums=0).lower(
                self.state, self.batch
            )
            self.step = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.metrics: Any = None

    def train(self, steps: int) -> None:
        state, metrics = self.state, None
        for _ in range(steps):
            state, metrics = self.step(state, self.batch)
        jax.block_until_ready((state, metrics))
        self.state, self.metrics = state, metrics

    def loss(self) -> float:
        return float(self.metrics["loss_sum"] / self.metrics["count"])


class PlainStep:
    """A user's own loop around `zoo.create_model`: Flax init, optax SGD, one `jax.jit` step."""

    def __init__(self, spec: Spec, precision: str, images: np.ndarray, labels: np.ndarray):
        model = create_model(spec, precision)
        variables = model.init(jax.random.key(0), jnp.zeros((1, *spec.shape)), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        weights_only = lambda tree: jax.tree.map(lambda p: p.ndim > 1, tree)  # noqa: E731
        tx = optax.chain(
            optax.add_decayed_weights(WEIGHT_DECAY, mask=weights_only),
            optax.sgd(LR, momentum=MOMENTUM),
        )

        def step(carry: tuple, images: jax.Array, labels: jax.Array) -> tuple[tuple, jax.Array]:
            params, batch_stats, opt_state = carry

            def loss_fn(params: Any) -> tuple[jax.Array, Any]:
                logits, updates = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    images,
                    train=True,
                    mutable=["batch_stats"],
                )
                logits = logits.astype(jnp.float32)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                return loss, updates.get("batch_stats", batch_stats)

            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

        self.carry = (params, batch_stats, tx.init(params))
        self.params = count_params(params)
        self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
        start = time.perf_counter()
        with tf32_allowed():
            lowered = jax.jit(step, donate_argnums=0).lower(self.carry, self.images, self.labels)
            self.step = lowered.compile()
        self.compile_s = time.perf_counter() - start
        self.last_loss: Any = None

    def train(self, steps: int) -> None:
        carry, loss = self.carry, None
        for _ in range(steps):
            carry, loss = self.step(carry, self.images, self.labels)
        jax.block_until_ready((carry, loss))
        self.carry, self.last_loss = carry, loss

    def loss(self) -> float:
        return float(self.last_loss)


def allow_torch_tf32() -> None:
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cudnn.benchmark = True


class TorchStep:
    """The same network, optimizer and batch in PyTorch: channels_last, AMP bf16 or TF32."""

    def __init__(
        self,
        spec: Spec,
        precision: str,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
    ):
        torch.manual_seed(0)
        self.device = device
        self.bf16 = precision == "bf16"
        self.model = torch_models.create(spec.name, spec.num_classes).to(
            device, memory_format=torch.channels_last
        )
        self.params = torch_models.trainable_params(self.model)
        # Decay on weights only, like zoo.training.state.decay_mask.
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay}],
            lr=LR,
            momentum=MOMENTUM,
            fused=device.type == "cuda",
        )
        nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        self.images = nchw.to(device).contiguous(memory_format=torch.channels_last)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.last_loss: torch.Tensor | None = None

    def use_compiled(self) -> None:
        self.forward = torch.compile(self.model)

    def use_eager(self) -> None:
        self.forward = self.model

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.forward(self.images)
            loss = torch.nn.functional.cross_entropy(logits.float(), self.labels)
            loss.backward()
            self.optimizer.step()
            self.last_loss = loss.detach()
        self.synchronize()

    def loss(self) -> float:
        return float(self.last_loss)


# --- Measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[int], None], steps: int) -> float:
    """Seconds per step of `fn(steps)`, which returns once its work is done on the device."""
    start = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - start) / steps


def warm_speed(fn: Callable[[int], None], settings: Settings) -> float:
    """Seconds per step after warm-up: the median of 3 single steps."""
    fn(settings.warmup)
    return statistics.median(timed(fn, 1) for _ in range(3))


def steps_per_block(seconds_per_step: float, settings: Settings) -> int:
    return min(settings.max_steps, max(1, round(settings.block_s / seconds_per_step)))


def interleave(steps: dict[str, Callable[[int], None]], settings: Settings) -> dict[str, Any]:
    """Rounds of one timed block of each step function, the order rotated every round."""
    blocks = {
        name: steps_per_block(warm_speed(fn, settings), settings) for name, fn in steps.items()
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(settings.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            # One untimed step first: the first step after the other framework ran can be slower.
            steps[name](1)
            seconds[name].append(timed(steps[name], blocks[name]))
    return {"seconds_per_step": seconds, "steps_per_block": blocks}


def choose_torch_mode(runner: TorchStep, settings: Settings, try_compile: bool) -> dict[str, Any]:
    """Warms PyTorch up eager (and compiled, if asked); keeps the faster. Returns what happened."""
    start = time.perf_counter()
    runner.train(1)
    record: dict[str, Any] = {"eager_first_step_s": round(time.perf_counter() - start, 2)}
    eager = warm_speed(runner.train, settings)
    record["warmup_s_per_step"] = {"eager": eager}
    if not try_compile:
        record.update(mode="eager", compile="not tried", compile_s=None)
        return record
    runner.use_compiled()
    start = time.perf_counter()
    try:
        runner.train(1)
    except Exception as error:  # any compiler failure: fall back to eager, recorded
        runner.use_eager()
        message = f"failed: {type(error).__name__}: {error}"
        record.update(mode="eager", compile=message[:500], compile_s=None)
        return record
    record["compile_s"] = round(time.perf_counter() - start, 2)
    compiled = warm_speed(runner.train, settings)
    record["warmup_s_per_step"]["compiled"] = compiled
    if compiled <= eager:
        record.update(mode="compile", compile="compiled")
    else:
        runner.use_eager()
        record.update(mode="eager", compile="compiled, slower than eager in warm-up")
    return record


def bench_row(
    spec: Spec,
    precision: str,
    settings: Settings,
    budget: Budget,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows (one per JAX step) of one model in one precision, and their details."""
    images, labels = make_batch(spec)
    ours = {
        "trainer": TrainerStep(spec, precision, images, labels),
        "plain": PlainStep(spec, precision, images, labels),
    }
    theirs = TorchStep(spec, precision, images, labels, device)
    for name, runner in ours.items():
        if runner.params != theirs.params:
            raise AssertionError(
                f"{spec.name}: {runner.params:,} parameters in JAX ({name}) "
                f"but {theirs.params:,} in PyTorch"
            )
    compiles = ", ".join(f"{name} {runner.compile_s:.1f} s" for name, runner in ours.items())
    log(f"{spec.name} {precision}: {theirs.params:,} parameters; JAX compiled: {compiles}")
    wants_compile = settings.torch_compile == "all" or settings.torch_compile == precision
    try_compile = wants_compile and budget.remaining() >= TORCH_COMPILE_RESERVE_S
    torch_record = choose_torch_mode(theirs, settings, try_compile)
    if wants_compile and not try_compile:
        torch_record["compile"] = "skipped: too little of the budget left"
    log(f"  PyTorch: {torch_record['mode']} ({torch_record['compile']})")
    timing = interleave(
        {"trainer": ours["trainer"].train, "plain": ours["plain"].train, "torch": theirs.train},
        settings,
    )
    losses = {name: runner.loss() for name, runner in [*ours.items(), ("torch", theirs)]}
    if not all(math.isfinite(loss) for loss in losses.values()):
        raise FloatingPointError(f"{spec.name} {precision}: a loss is not finite: {losses}")
    seconds = timing["seconds_per_step"]
    torch_img_s = spec.batch / statistics.median(seconds["torch"])
    macs = zoo.summary(spec.name, spec.shape, num_classes=spec.num_classes).total_macs
    rows = []
    for name, runner in ours.items():
        zoo_img_s = spec.batch / statistics.median(seconds[name])
        rows.append(
            {
                "model": spec.name,
                "precision": precision,
                "step": name,
                "batch": spec.batch,
                "image": list(spec.shape),
                "zoo_img_s": significant(zoo_img_s),
                "torch_img_s": significant(torch_img_s),
                "ratio": significant(zoo_img_s / torch_img_s),
                "train_flops_per_image": 6 * macs,
                "zoo_compile_s": round(runner.compile_s, 2),
                "torch_compile_s": torch_record["compile_s"],
                "torch_mode": torch_record["mode"],
                "torch_compile": torch_record["compile"],
            }
        )
        log(f"  {name}: {zoo_img_s:,.1f} img/s, PyTorch {torch_img_s:,.1f}")
    details = {
        "seconds_per_step": {k: [significant(s) for s in v] for k, v in seconds.items()},
        "steps_per_block": timing["steps_per_block"],
        "final_loss": {k: round(v, 4) for k, v in losses.items()},
        "torch": torch_record,
        "params": theirs.params,
        "forward_macs_per_image": macs,
    }
    return rows, details


# --- Reporting -----------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict[str, Any]:
    jax_device = jax.devices()[0]
    info = {
        "jax_platform": jax_device.platform,
        "name": jax_device.device_kind,
        "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "host": platform.node(),
        "cpu_cores": os.cpu_count(),
    }
    if device.type == "cuda":
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30)
    return info


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    found = {name: md.version(name) for name in ("jax", "jaxlib", "flax", "optax", "numpy")}
    found.update(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=md.version("torchvision"),
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    )
    return found


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| model | precision | batch | zoo step | zoo img/s | PyTorch img/s | PyTorch | ratio "
        "| MFU | zoo compile s | PyTorch compile s |"
    )
    lines = [header, "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        torch_compile = "-" if r["torch_compile_s"] is None else f"{r['torch_compile_s']:.1f}"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['step']} "
            f"| {r['zoo_img_s']:,.1f} | {r['torch_img_s']:,.1f} | {r['torch_mode']} "
            f"| {r['ratio']:.2f} | {100 * r['mfu']:.1f}% | {r['zoo_compile_s']:.1f} "
            f"| {torch_compile} |"
        )
    return "\n".join(lines)


def write_report(
    out: Path, report: dict[str, Any], bf16: list[float], tf32: list[float], budget: Budget
) -> None:
    """Writes `report` with its roofs (the median of the matmul samples so far) and MFUs."""
    rate = statistics.median(bf16)
    report["roofs"] = {
        "what": f"{report['settings']['matmul_n']}^3 matmul, jax.jit(jnp.matmul), random inputs",
        "bf16_tflops": significant(rate),
        "bf16_tflops_samples": [significant(r) for r in bf16],
        "tf32_tflops": significant(statistics.median(tf32)),
    }
    for r in report["rows"]:
        r["mfu"] = significant(r["zoo_img_s"] * r["train_flops_per_image"] / (rate * 1e12))
    report["wall_s"] = round(budget.elapsed(), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def parse_rows(text: str, specs: dict[str, Spec]) -> list[tuple[str, str]]:
    rows = []
    for item in text.split(","):
        name, _, precision = item.strip().partition(":")
        if name not in specs or precision not in PRECISIONS:
            raise SystemExit(
                f"gpu.py: error: unknown row {item!r}: MODEL:PRECISION with MODEL in "
                f"{', '.join(specs)} and PRECISION in {', '.join(PRECISIONS)}"
            )
        rows.append((name, precision))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the JSON written (default bench/results/gpu-DEVICE.json)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny batches and images, 1-2 timed steps, no torch.compile: a CPU test run",
    )
    parser.add_argument("--budget-s", type=float, help="rows start only within this (420 s)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds per row (5)")
    parser.add_argument(
        "--rows",
        help="comma-separated MODEL:PRECISION, e.g. resnet50:bf16 (default: every row, in order)",
    )
    parser.add_argument(
        "--torch-compile",
        choices=("bf16", "all", "off"),
        help="rows where torch.compile is tried (default bf16; --tiny: off)",
    )
    args = parser.parse_args(argv)

    settings = TINY if args.tiny else FULL
    overrides = {"budget_s": args.budget_s, "rounds": args.rounds}
    overrides["torch_compile"] = args.torch_compile
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    specs = TINY_SPECS if args.tiny else SPECS
    rows = parse_rows(args.rows, specs) if args.rows else TINY_ROWS if args.tiny else ROWS
    platform_name = jax.devices()[0].platform
    if platform_name != "gpu" and not args.tiny:
        parser.error(f"JAX runs on {platform_name}, not a GPU: use --tiny for a test run")
    device = torch.device("cuda" if platform_name == "gpu" else "cpu")
    if platform_name == "gpu" and not torch.cuda.is_available():
        parser.error("JAX sees a GPU but PyTorch does not: the comparison needs both on it")

    def log(message: str) -> None:
        print(message, flush=True)

    # The benchmark measures compilation: never read it from a persistent cache.
    jax.config.update("jax_enable_compilation_cache", False)
    allow_torch_tf32()
    budget = Budget(settings.budget_s)
    report: dict[str, Any] = {
        "device": device_info(device),
        "versions": versions(),
        "settings": dataclasses.asdict(settings),
        "environment": {
            "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"],
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
        },
        "rows": [],
        "details": {},
        "skipped": [],
        "failed": [],
    }
    log(f"{report['device']['name']} ({platform_name}); budget {settings.budget_s:.0f} s")
    bf16 = matmul_tflops(settings.matmul_n, jnp.bfloat16)
    tf32 = matmul_tflops(settings.matmul_n, jnp.float32)
    log(
        f"matmul {settings.matmul_n}^3: bf16 {statistics.median(bf16):.3g} TFLOP/s, "
        f"tf32 {statistics.median(tf32):.3g}"
    )
    out = Path(
        args.out or REPO / "bench" / "results" / f"gpu-{slug(report['device']['name'])}.json"
    )
    for name, precision in rows:
        if budget.remaining() <= 0:
            report["skipped"].append(f"{name} {precision}: budget spent")
            log(f"{name} {precision}: skipped, budget spent")
            continue
        try:
            results, details = bench_row(specs[name], precision, settings, budget, device, log)
        except Exception as error:  # one row's failure (out of memory, say) must not lose the rest
            traceback.print_exc()
            report["failed"].append(f"{name} {precision}: {type(error).__name__}: {error}"[:500])
        else:
            report["rows"].extend(results)
            report["details"][f"{name}/{precision}"] = details
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_report(out, report, bf16, tf32, budget)  # a run cut short keeps its rows
    bf16 += matmul_tflops(settings.matmul_n, jnp.bfloat16)
    write_report(out, report, bf16, tf32, budget)
    log("")
    log(markdown_table(report["rows"]))
    log(
        "\nMFU: 6 x forward MACs per image over the measured bf16 matmul rate, "
        f"{report['roofs']['bf16_tflops']:.3g} TFLOP/s "
        f"(TF32 matmul: {report['roofs']['tf32_tflops']:.3g} TFLOP/s)"
    )
    for label in ("skipped", "failed"):
        if report[label]:
            log(f"{label}: {'; '.join(report[label])}")
    log(f"wrote {out} in {report['wall_s']:.0f} s")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

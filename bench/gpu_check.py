"""The zoo's correctness on a GPU (issue 15, item 2), as one script for the lent machine.

    JAX_PLATFORMS=cuda python bench/gpu_check.py [--out FILE]

A script, not a test file: `tests/conftest.py` imports `zoo.data`, hence tensorflow_datasets,
which the GPU image lacks; this imports only zoo, zoo.convert, torch, torchvision and, from
`bench/gpu.py`, the trainer's modules without zoo.training's `__init__`.

In this order (the JSON is rewritten after each check: a run cut short keeps its results):

1. parity: torchvision's ResNet-18, ResNet-50 and AlexNet with random weights and randomised
   BatchNorm, converted by `zoo.convert`, logits on the GPU against torchvision on the CPU in
   float32. Under `jax.default_matmul_precision("float32")` the bound is the CPU test's
   (`tests/test_torchvision_parity.py`: max |difference| < 1e-4 and < 1e-4 of max |logit|);
   under "tensorfloat32" it is ||difference|| / ||logits|| < 1e-2 (`TF32_RELATIVE_L2`): TF32
   keeps 10 mantissa bits, a relative rounding of ~5e-4 per operand, over ~50 layers.
2. bf16 training: ResNet-20 with `dtype=jnp.bfloat16` (float32 parameters), the zoo's
   `train_step`, SGD, on one fixed synthetic batch: the mean loss of the last 5 of 40 steps is
   below 0.7 of the first step's, and every loss is finite.
3. registry: every registered model, forward in training mode and the gradient of its loss, on
   the GPU at JAX's default precision (TF32 for float32 matmuls and convolutions), batch 2, its
   design input: loss and gradients finite, gradients shaped like the parameters, some nonzero.

Prints one PASS/FAIL line per check, writes the details as JSON (default
bench/results/gpu-check-DEVICE.json) and exits 1 if any check failed. Without a GPU it refuses
to run unless `--allow-cpu` (for testing the script itself, with `--models` and `--parity`).
"""

from __future__ import annotations

import argparse
import json
import sys
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
import torchvision  # noqa: E402
from gpu import slug, training_config, training_state, training_step  # noqa: E402

import zoo  # noqa: E402
from zoo.convert import convert_state_dict  # noqa: E402

FLOAT32_BOUND = 1e-4  # absolute, and relative to the logits' scale: the CPU parity test's
TF32_RELATIVE_L2 = 1e-2
PARITY_ARCHS = {"resnet18": 64, "resnet50": 64, "alexnet": 255}  # arch -> input size
BF16_STEPS, BF16_BATCH, BF16_DROP = 40, 64, 0.7


def registry_check(name: str) -> dict[str, Any]:
    """Forward (training mode) and gradient of one model at its design input, batch 2."""
    info = zoo.model_info(name)
    model = zoo.create_model(name)
    x = jax.random.normal(jax.random.key(2), (2, *info.input_shape))
    labels = jnp.arange(2) % info.num_classes
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.jit(model.init)(rngs, x)

    def loss(params: Any) -> jax.Array:
        outputs, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            rngs={"dropout": jax.random.key(3)},
            mutable=["batch_stats"],
        )
        if info.task == "reconstruction":
            return jnp.mean((outputs - x) ** 2)
        return -jnp.mean(jax.nn.log_softmax(outputs)[jnp.arange(2), labels])

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    finite = bool(np.isfinite(float(value))) and all(bool(jnp.isfinite(g).all()) for g in leaves)
    same_shapes = jax.tree.structure(grads) == jax.tree.structure(variables["params"]) and all(
        g.shape == p.shape
        for g, p in zip(leaves, jax.tree.leaves(variables["params"]), strict=True)
    )
    nonzero = any(float(jnp.abs(g).max()) > 0 for g in leaves)
    return {
        "passed": finite and same_shapes and nonzero,
        "loss": float(value),
        "finite": finite,
        "shapes_match": same_shapes,
        "some_gradient_nonzero": nonzero,
    }


def random_torchvision(arch: str, size: int) -> torch.nn.Module:
    """torchvision's `arch`, random weights, BatchNorm statistics from one training pass (as in
    tests/test_torchvision_parity.py, which this script cannot import: it imports the CLI)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    blocks = (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = 1.0
        for block in (m for m in model.modules() if isinstance(m, blocks)):
            last = block.bn3 if isinstance(block, blocks[1]) else block.bn2
            last.weight.uniform_(0.0, 0.5)
        model.train()
        model(torch.randn(4, 3, size, size))
    return model.eval()


def parity_check(arch: str, size: int) -> dict[str, Any]:
    """Converted torchvision logits on the GPU, float32 and TF32, against torch's on the CPU."""
    model = random_torchvision(arch, size)
    images = np.random.default_rng(1).standard_normal((2, 3, size, size), np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy().astype(np.float64)
    converted = convert_state_dict(arch, {k: v.numpy() for k, v in model.state_dict().items()})
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
    scale = float(np.abs(reference).max())
    result: dict[str, Any] = {"input": size, "logit_scale": scale}
    for precision in ("float32", "tensorfloat32"):
        with jax.default_matmul_precision(precision):
            forward = jax.jit(lambda v, x: converted.module.apply(v, x, train=False))
            ours = np.asarray(forward(converted.variables, nhwc), np.float64)
        difference = ours - reference
        result[precision] = {
            "max_abs": float(np.abs(difference).max()),
            "relative_l2": float(np.linalg.norm(difference) / np.linalg.norm(reference)),
        }
    exact, tf32 = result["float32"], result["tensorfloat32"]
    result["passed"] = (
        exact["max_abs"] < FLOAT32_BOUND
        and exact["max_abs"] < FLOAT32_BOUND * scale
        and tf32["relative_l2"] < TF32_RELATIVE_L2
    )
    return result


def bf16_training_check() -> dict[str, Any]:
    """ResNet-20 in bfloat16 memorising one synthetic batch with the zoo's own train step."""
    model = zoo.create_model("resnet20", dtype=jnp.bfloat16)
    config = training_config.TrainConfig(
        model="resnet20", batch_size=BF16_BATCH, lr=0.05, weight_decay=0.0, epochs=1
    )
    tx = training_state.make_optimizer(config, steps_per_epoch=BF16_STEPS)
    state = training_state.create_train_state(model, tx, (32, 32, 3), jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((BF16_BATCH, 32, 32, 3), np.float32)),
        "label": jnp.asarray(rng.integers(0, 10, BF16_BATCH).astype(np.int32)),
    }
    step = jax.jit(training_step.train_step, donate_argnums=0)
    losses = []
    for _ in range(BF16_STEPS):
        state, metrics = step(state, batch)
        losses.append(metrics["loss_sum"] / metrics["count"])
    losses = [float(v) for v in jax.device_get(losses)]
    param_dtypes = sorted({str(p.dtype) for p in jax.tree.leaves(state.params)})
    last = float(np.mean(losses[-5:]))
    return {
        "passed": bool(np.isfinite(losses).all())
        and last < BF16_DROP * losses[0]
        and param_dtypes == ["float32"],
        "first_loss": losses[0],
        "last5_mean_loss": last,
        "param_dtypes": param_dtypes,
        "losses": [round(v, 4) for v in losses],
    }


def run_check(
    results: dict[str, Any], label: str, check: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result = check()
    except Exception as error:  # a crash on the GPU is a failed check, reported with the rest
        result = {"passed": False, "error": f"{type(error).__name__}: {error}"[:500]}
    result["seconds"] = round(time.perf_counter() - start, 2)
    results[label] = result
    shown = {k: v for k, v in result.items() if k not in ("passed", "losses")}
    print(f"{'PASS' if result['passed'] else 'FAIL'} {label} {shown}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON written (default bench/results/gpu-check-DEVICE.json)")
    parser.add_argument("--models", help="comma-separated registry models (default: all)")
    parser.add_argument("--parity", help=f"comma-separated, from {', '.join(PARITY_ARCHS)}")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (testing)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.allow_cpu:
        parser.error(f"JAX runs on {device.platform}, not a GPU (--allow-cpu to test the script)")
    models = args.models.split(",") if args.models else zoo.list_models()
    archs = args.parity.split(",") if args.parity else list(PARITY_ARCHS)
    unknown = [a for a in archs if a not in PARITY_ARCHS]
    if unknown:
        parser.error(
            f"unknown --parity {', '.join(unknown)}; choose from {', '.join(PARITY_ARCHS)}"
        )

    name = slug(device.device_kind)
    out = Path(args.out or REPO / "bench" / "results" / f"gpu-check-{name}.json")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        *((f"parity/{a}", lambda a=a: parity_check(a, PARITY_ARCHS[a])) for a in archs),
        ("bf16_training/resnet20", bf16_training_check),
        *((f"registry/{m}", lambda m=m: registry_check(m)) for m in models),
    ]
    for label, check in checks:  # the cheap ones first; the JSON is rewritten after each
        run_check(results, label, check)
        failed = [label for label, result in results.items() if not result["passed"]]
        report = {
            "device": device.device_kind,
            "platform": device.platform,
            "versions": {"jax": jax.__version__, "torch": torch.__version__},
            "bounds": {
                "float32_max_abs_and_relative_to_scale": FLOAT32_BOUND,
                "tf32_relative_l2": TF32_RELATIVE_L2,
                "bf16_last5_over_first_loss": BF16_DROP,
            },
            "checks": results,
            "failed": failed,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(results) - len(failed)}/{len(results)} checks passed in {report['wall_s']:.0f} s")
    print(f"failed: {', '.join(failed)}" if failed else "all passed", f"- wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

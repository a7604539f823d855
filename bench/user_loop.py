"""A user's own optax loop around `zoo.create_model`, in fresh processes, variants interleaved.

Each variant is a zoo source tree (put first on PYTHONPATH) and a setup:

- `import`: `import zoo` and nothing else (a tree whose import applied the CPU settings then
  had them; this tree's does not);
- `configure`: `zoo.configure_cpu()` first, as the README's loop does;
- `plain`: neither, with `ZOO_XLA_DEFAULTS=0 ZOO_MALLOC_DEFAULTS=0` set as well.

Every round starts one process per variant and model (in alternating order), each of which
compiles `jax.jit(step, donate_argnums=...)` (SGD momentum 0.9), runs warm-up steps, then times
blocks of steps; the figure of a process is the median of its blocks, and the table the median
over rounds. Also per step: the process's CPU time (user + system, `getrusage`), which a busy
host inflates far less than wall time, and its minor page faults.

    python bench/user_loop.py --variant main=/work/main:import --variant this=.:configure \\
        --models lenet5,resnet20,resnet18 --precisions fp32,bf16 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SPECS = {"lenet5": 128, "resnet20": 128, "resnet18": 32}

CHILD = r"""
import json, resource, sys, time
spec = json.loads(sys.argv[1])
import jax, jax.numpy as jnp, numpy as np, optax
import zoo
if spec["setup"] == "configure":
    zoo.configure_cpu()
name, batch = spec["model"], spec["batch"]
dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16}[spec["precision"]]
model = zoo.create_model(name, num_classes=10, dtype=dtype)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((batch, *zoo.model_info(name).input_shape)), jnp.float32)
y = jnp.asarray(rng.integers(0, 10, batch))
variables = model.init(jax.random.key(0), x[:1], train=False)
tx = optax.sgd(0.1, momentum=0.9)


def step(params, stats, opt, x, y):
    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return loss.mean(), updates.get("batch_stats", stats)

    (loss, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss


state = [variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"])]
compiled = jax.jit(step, donate_argnums=(0, 1, 2))


def run():
    params, stats, opt, loss = compiled(*state, x, y)
    loss.block_until_ready()
    state[:] = [params, stats, opt]


for _ in range(spec["warmup"]):
    run()
speeds, cpu, faults = [], [], []
for _ in range(spec["blocks"]):
    before = resource.getrusage(resource.RUSAGE_SELF)
    steps, start = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - start < spec["block_s"]:
        run()
        steps += 1
    after = resource.getrusage(resource.RUSAGE_SELF)
    speeds.append(batch * steps / (time.perf_counter() - start))
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    cpu.append(1000 * used / steps)
    faults.append((after.ru_minflt - before.ru_minflt) / steps)
print(json.dumps({
    "img_s": statistics.median(speeds),
    "cpu_ms": statistics.median(cpu),
    "faults": statistics.median(faults),
}))
"""


def run_child(tree: str, setup: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    env.pop("XLA_FLAGS", None)
    if setup == "plain":
        env.update(ZOO_XLA_DEFAULTS="0", ZOO_MALLOC_DEFAULTS="0")
    done = subprocess.run(
        [sys.executable, "-c", "import statistics\n" + CHILD, json.dumps({**spec, "setup": setup})],
        env=env,
        capture_output=True,
        text=True,
        cwd="/",
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=TREE:SETUP")
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="write every process's figures here")
    args = parser.parse_args(argv)
    variants = {}
    for text in args.variant:
        name, _, rest = text.partition("=")
        tree, _, setup = rest.rpartition(":")
        variants[name] = (tree, setup)
    rows = [(m, p) for m in args.models.split(",") for p in args.precisions.split(",")]
    results: dict = {f"{m} {p}": {name: [] for name in variants} for m, p in rows}
    for r in range(args.rounds):
        for model, precision in rows:
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                spec = {
                    "model": model,
                    "batch": SPECS[model],
                    "precision": precision,
                    "blocks": args.blocks,
                    "block_s": args.block_s,
                    "warmup": args.warmup,
                }
                figures = run_child(*variants[name], spec)
                results[f"{model} {precision}"][name].append(figures)
                print(f"round {r} {model} {precision} {name}: {figures}", file=sys.stderr)
    print(f"medians of {args.rounds} rounds (fresh processes; load {os.getloadavg()})")
    names = list(variants)
    each = " / ".join(names)
    print(f"| row | img/s {each} | CPU ms per step {each} | faults per step {each} |")
    print("|---|---:|---:|---:|")
    for row, by_variant in results.items():

        def medians(key: str, by_variant: dict = by_variant) -> list[float]:
            return [statistics.median(f[key] for f in by_variant[n]) for n in names]

        columns = [
            " / ".join(f"{m:,.1f}" for m in medians("img_s")),
            " / ".join(f"{m:,.1f}" for m in medians("cpu_ms")),
            " / ".join(f"{m:,.0f}" for m in medians("faults")),
        ]
        print(f"| {row} | " + " | ".join(columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Process start to first train step: the zoo against PyTorch, fresh processes, interleaved.

Each round starts one process per framework running a user's own loop: import (the zoo's
then `zoo.configure_cpu()`), create the model, initialise it (eager `model.init` for the zoo),
one SGD step with momentum on a random batch (the zoo's jitted: trace, compile, run). Each
process reports the time since its start at each stage; this prints the medians and the ratio
of the totals, zoo / PyTorch.

    python bench/startup.py --model resnet152 --batch 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

STAGES = ("import", "create", "init", "first_step")

# Prints {"stage": seconds since the process started} for each stage, as one JSON line.
ZOO = r"""
import time
start = time.perf_counter()
marks = {}
import jax, jax.numpy as jnp, optax, zoo
zoo.configure_cpu()
marks["import"] = time.perf_counter() - start
model_name, batch = sys.argv[1], int(sys.argv[2])
info = zoo.model_info(model_name)
model = zoo.create_model(model_name, num_classes=10)
marks["create"] = time.perf_counter() - start
x = jax.random.normal(jax.random.key(1), (batch, *info.input_shape))
y = jnp.arange(batch) % 10
variables = jax.block_until_ready(model.init(jax.random.key(0), x, train=False))
marks["init"] = time.perf_counter() - start
optimizer = optax.sgd(0.1, momentum=0.9)

@jax.jit
def step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates.get("batch_stats", batch_stats)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

params = variables["params"]
out = step(params, variables.get("batch_stats", {}), optimizer.init(params), x, y)
float(out[-1])
marks["first_step"] = time.perf_counter() - start
print(json.dumps(marks))
"""

TORCH = r"""
import time
start = time.perf_counter()
marks = {}
import torch, torch_models
marks["import"] = time.perf_counter() - start
model_name, (batch, side, channels) = sys.argv[1], map(int, sys.argv[2:5])
model = torch_models.create(model_name, 10).to(memory_format=torch.channels_last)
marks["create"] = time.perf_counter() - start
marks["init"] = marks["create"]  # PyTorch initialises in the constructor
x = torch.randn(batch, channels, side, side).to(memory_format=torch.channels_last)
y = torch.arange(batch) % 10
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model.train()
loss = torch.nn.functional.cross_entropy(model(x), y)
optimizer.zero_grad()
loss.backward()
optimizer.step()
float(loss)
marks["first_step"] = time.perf_counter() - start
print(json.dumps(marks))
"""


def run(program: str, *argv: str) -> dict[str, float]:
    prelude = "import json, sys\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + program, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import zoo  # only for the input shape; the timed processes import their own

    height, _, channels = zoo.model_info(args.model).input_shape
    runs: dict[str, list[dict[str, float]]] = {"zoo": [], "torch": []}
    for _ in range(args.rounds):
        runs["zoo"].append(run(ZOO, args.model, str(args.batch)))
        runs["torch"].append(run(TORCH, args.model, str(args.batch), str(height), str(channels)))
    medians = {
        framework: {stage: statistics.median(r[stage] for r in marks) for stage in STAGES}
        for framework, marks in runs.items()
    }
    print(
        f"{args.model}, batch {args.batch}: seconds since process start (median of "
        f"{args.rounds} interleaved rounds)"
    )
    print("| framework | " + " | ".join(STAGES) + " |")
    print("|---|" + "---:|" * len(STAGES))
    for framework, stages in medians.items():
        print(f"| {framework} | " + " | ".join(f"{stages[s]:.1f}" for s in STAGES) + " |")
    totals = [r["first_step"] for r in runs["zoo"]], [r["first_step"] for r in runs["torch"]]
    ratio = medians["zoo"]["first_step"] / medians["torch"]["first_step"]
    print(
        f"zoo / PyTorch, start to first step: {ratio:.2f} "
        f"(zoo {min(totals[0]):.1f}-{max(totals[0]):.1f} s, "
        f"PyTorch {min(totals[1]):.1f}-{max(totals[1]):.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

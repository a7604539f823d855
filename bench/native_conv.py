"""The train step with XLA's convolutions, with oneDNN's, and in PyTorch, side by side.

    python bench/native_conv.py resnet20 [ROUNDS] [--precision bf16]   # lenet5, resnet18 too
    OMP_NUM_THREADS=1 python bench/native_conv.py resnet20              # to pin the threads

A user's own `jax.jit` + optax loop (SGD momentum 0.9) around `zoo.create_model(name,
dtype=...)`: once traced under `zoo.ops.portable()` (XLA's convolutions only), once as is
(oneDNN's where it has a JIT kernel), and the same network in PyTorch, channels_last (bf16:
under `torch.autocast("cpu", torch.bfloat16)`). Timed blocks of the three alternate, each after
one untimed step; prints the medians (img/s) and their ratios as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch_models

import zoo
import zoo.ops

zoo.configure_cpu()  # the settings of `zoo train`, before any JAX backend exists

SPECS = {
    "lenet5": (128, (32, 32, 1), 10),
    "resnet20": (128, (32, 32, 3), 10),
    "resnet18": (32, (224, 224, 3), 1000),
}
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def jax_step(name, images, labels, portable: bool, precision: str):
    model = zoo.create_model(name, num_classes=SPECS[name][2], dtype=DTYPES[precision])
    tx = optax.sgd(0.1, momentum=0.9)
    with zoo.ops.portable() if portable else contextlib.nullcontext():
        variables = model.init(jax.random.key(0), images[:1])

        def step(params, stats, opt, x, y):
            def loss(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
                )
                logits = logits.astype(jnp.float32)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, updates.get("batch_stats", stats)

            (loss, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), stats, opt, loss

        params = variables["params"]
        state = [params, variables.get("batch_stats", {}), tx.init(params)]
        compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, images, labels).compile()

    def run():
        params, stats, opt, loss = compiled(*state, images, labels)
        loss.block_until_ready()
        state[:] = [params, stats, opt]

    return run


def torch_step(name, images, labels, precision: str):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    net = torch_models.create(name, SPECS[name][2])
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.asarray(labels)).long()

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return run


def main(name: str, rounds: int, precision: str = "fp32", block_s: float = 0.5) -> dict:
    batch, shape, classes = SPECS[name]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, classes, batch))
    runners = {
        "xla": jax_step(name, images, labels, portable=True, precision=precision),
        "onednn": jax_step(name, images, labels, portable=False, precision=precision),
        "torch": torch_step(name, images, labels, precision),
    }
    speeds = {k: [] for k in runners}
    for r in range(rounds):
        for k in list(runners) if r % 2 == 0 else list(reversed(runners)):
            runners[k]()  # the first step after another framework ran is slower
            steps, start = 0, time.perf_counter()
            while steps == 0 or time.perf_counter() - start < block_s:
                runners[k]()
                steps += 1
            speeds[k].append(batch * steps / (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in speeds.items()}
    return {
        "model": name,
        "batch": batch,
        "precision": precision,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "img_s": {k: round(v, 1) for k, v in median.items()},
        "onednn/xla": round(median["onednn"] / median["xla"], 2),
        "onednn/torch": round(median["onednn"] / median["torch"], 2),
        "xla/torch": round(median["xla"] / median["torch"], 2),
        "rounds_img_s": {k: [round(s, 1) for s in v] for k, v in speeds.items()},
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("rounds", type=int, nargs="?", default=7)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args()
    print(json.dumps(main(args.model, args.rounds, args.precision)))

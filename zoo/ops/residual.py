"""The join of a residual block, `relu(x + shortcut)`: the extension's kernels on CPU, XLA's
ops elsewhere.

`add_relu(x, shortcut)` is `nn.relu(x + shortcut)`, its values and gradient bit for bit (the
gradient of both operands is the output's where the output is positive, else +0), NaN included:
where the sum is NaN the kernels give NaN, as `lax.max` defines it. On CPU, for two float32 or
bfloat16 arrays of one shape, it runs two kernels of `csrc/add_relu.cc` (`zoo.ops.autodiff`):
a forward that adds, rounds once and clamps in one pass, and a backward that masks the gradient
by the output's sign, reading the output the next layer keeps anyway (no other residual), where
XLA:CPU computes a bf16 join in float32 across several fusions. Under a batch-sharded
`jax.jit` each device runs its own shard (`zoo.ops.sharding`). Anything else (other dtypes,
broadcasting operands, no extension, GPU and TPU) is `nn.relu(x + shortcut)`, chosen inside
the same jitted function (`zoo.ops.on_cpu`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.ops import backend, native, sharding

# The dtypes the kernels read and write.
NATIVE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def reference_add_relu(x: jax.Array, shortcut: jax.Array) -> jax.Array:
    return nn.relu(x + shortcut)


def add_relu(x: jax.Array, shortcut: jax.Array) -> jax.Array:
    """`nn.relu(x + shortcut)`, fast on CPU (see module)."""
    x, shortcut = jnp.asarray(x), jnp.asarray(shortcut)
    if not (
        x.shape == shortcut.shape
        and x.ndim > 0
        and x.dtype == shortcut.dtype
        and x.dtype in NATIVE_DTYPES
        and backend.native_applies()
        and native.library() is not None
    ):
        return reference_add_relu(x, shortcut)
    return _native_add_relu(x, shortcut, backend.pass_team(x))


def _kernel(target: str, a: jax.Array, b: jax.Array, num_threads: int) -> jax.Array:
    """`target` on two arrays of one shape, per batch shard; its result shaped as they are."""
    return backend.call(
        target,
        lambda a, b: jax.ShapeDtypeStruct(a.shape, a.dtype),
        a,
        b,
        batch=sharding.split(batched=(True, True), summed=False),
        vmap_method="broadcast_all",
        num_threads=num_threads,
    )


def _native_add_relu(x: jax.Array, shortcut: jax.Array, num_threads: int) -> jax.Array:
    """The kernels' join, differentiable to any order (`zoo.ops.autodiff`): the output is the
    residual, its sign the gradient's mask."""
    forward, backward = native.ADD_RELU_TARGETS

    def evaluate(x, shortcut):
        y = _kernel(forward, x, shortcut, num_threads)
        return (y,), (y,)

    def cotangent(primals, residuals, cotangents):
        ((y,), (g,)) = residuals, cotangents
        d = _kernel(backward, y, g, num_threads)
        return tuple(sharding.cotangent_like(d, primal) for primal in primals)

    def reference(x, shortcut):
        return (reference_add_relu(x, shortcut),)

    join = backend.native_op("add_relu", reference, evaluate, cotangent)
    return join(x, shortcut)[0]

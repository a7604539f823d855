"""Every zoo op differentiates to second order in both modes (`zoo.ops.autodiff`), equal to
XLA's derivatives of the same op (`zoo.ops.portable()`): on the native kernels, and on the XLA
path (`ZOO_NATIVE=0`, where max pooling keeps its own gradient)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo import ops

NHWC = ("NHWC", "HWIO", "NHWC")


def conv(x, k):
    return (
        ops.conv_general_dilated(
            x, k, (2, 2), ((1, 0), (0, 1)), dimension_numbers=NHWC, feature_group_count=2
        ),
    )


def batch_norm_training(x, scale, bias):
    return ops.batch_norm_training(x, scale, bias, 1e-5, relu=True)


def batch_norm_inference(x, mean, var, scale, bias):
    return (ops.batch_norm_inference(x, mean, var, scale, bias, 1e-5, relu=True),)


def max_pool(x):
    return (ops.max_pool(x, 3, 2, 1),)


def add_relu(x, shortcut):
    return (ops.add_relu(x, shortcut),)


def normal(*shape: int, seed: int = 0, offset: float = 0.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) + offset, jnp.float32)


# Each op with primals, and the index of the (small) one whose Hessian is taken in full.
CASES = {
    "conv": (conv, (normal(2, 7, 6, 4), normal(3, 3, 2, 6, seed=1)), 1),
    # 16 channels: oneDNN's full-width batch-norm kernels (`zoo.ops.batch_norm.VECTOR_CHANNELS`).
    "batch_norm_training": (
        batch_norm_training,
        (normal(4, 5, 5, 16), normal(16, seed=1, offset=1.0), normal(16, seed=2)),
        1,
    ),
    "batch_norm_inference": (
        batch_norm_inference,
        (
            normal(3, 4, 5, 16),
            normal(16, seed=1),
            jnp.square(normal(16, seed=2)) + 0.5,
            normal(16, seed=3, offset=1.0),
            normal(16, seed=4),
        ),
        3,
    ),
    "max_pool": (max_pool, (normal(2, 7, 6, 3),), 0),
    "add_relu": (add_relu, (normal(2, 5, 5, 4), normal(2, 5, 5, 4, seed=1)), 1),
}


@pytest.fixture(params=["native", "xla"])
def path(request, monkeypatch):
    if request.param == "xla":
        monkeypatch.setenv("ZOO_NATIVE", "0")
    elif not zoo.ops.native_available():
        pytest.skip("the native extension is not built or loadable here")
    return request.param


def portably(fn):
    @functools.wraps(fn)
    def traced(*args):
        with ops.portable():
            return fn(*args)

    return traced


def assert_close(ours, theirs, rtol: float = 1e-4) -> None:
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        scale = float(jnp.max(jnp.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", CASES)
def test_each_op_differentiates_to_second_order_as_xla_does(name, path):
    op, primals, small = CASES[name]
    tangents = tuple(normal(*p.shape, seed=10 + i) for i, p in enumerate(primals))
    weights = tuple(normal(*o.shape, seed=20 + i) for i, o in enumerate(op(*primals)))

    def loss(*primals):
        return sum(jnp.vdot(w, jnp.sin(o)) for w, o in zip(weights, op(*primals), strict=True))

    def of_small(fn):  # fn of the small primal alone, the others fixed
        return lambda p: fn(*primals[:small], p, *primals[small + 1 :])

    derivatives = {
        "jvp": lambda: jax.jvp(op, primals, tangents),
        "forward over reverse": lambda: jax.jvp(
            jax.grad(loss, tuple(range(len(primals)))), primals, tangents
        ),
        "reverse over reverse": lambda: jax.grad(
            lambda *p: jax.tree.reduce(
                jnp.add, jax.tree.map(jnp.vdot, jax.grad(loss, tuple(range(len(p))))(*p), tangents)
            ),
            tuple(range(len(primals))),
        )(*primals),
        "hessian": lambda: jax.hessian(of_small(loss))(primals[small]),
        "jacfwd of the op": lambda: jax.jacfwd(of_small(op))(primals[small]),
    }
    if path == "native":  # the kernels run (they have these configurations on every x86 CPU)
        hlo = jax.jit(jax.grad(loss)).lower(*primals).as_text()
        assert "zoo_" in hlo, hlo
    for kind, derivative in derivatives.items():
        ours = jax.jit(derivative)()
        theirs = jax.jit(portably(derivative))()
        try:
            assert_close(ours, theirs)
        except AssertionError as error:
            raise AssertionError(f"{kind}: {error}") from None


@pytest.mark.skipif(not zoo.ops.native_available(), reason="the native extension is not built")
def test_every_derivative_of_a_convolution_runs_on_its_kernels():
    """A convolution is bilinear: its Hessian-vector products (forward over reverse, reverse
    over reverse) are sums of its three directions, on oneDNN, with no XLA convolution."""
    (x, k), tangents = CASES["conv"][1], (normal(2, 7, 6, 4, seed=7), normal(3, 3, 2, 6, seed=8))

    def loss(x, k):
        return jnp.sum(jnp.sin(conv(x, k)[0]))

    def reverse_over_reverse(x, k):
        def inner(*p):
            return sum(map(jnp.vdot, jax.grad(loss, (0, 1))(*p), tangents))

        return jax.grad(inner, (0, 1))(x, k)

    for derivative in (
        lambda x, k: jax.jvp(jax.grad(loss, (0, 1)), (x, k), tangents)[1],
        reverse_over_reverse,
    ):
        hlo = jax.jit(derivative).lower(x, k).compile().as_text()
        assert " convolution(" not in hlo
        for direction in ("forward", "backward_data", "backward_weights"):
            assert f"zoo_onednn_conv_{direction}" in hlo


def readme_example() -> str:
    """The README's "Derivatives of any order" example, as it is written there."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Derivatives of any order") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


def test_the_readme_example_gives_xlas_derivatives():
    model = zoo.create_model("resnet20", num_classes=10, stage_sizes=(1, 1, 1))
    x, y = normal(4, 32, 32, 3), jnp.arange(4) % 10
    variables = model.init(jax.random.key(0), x)
    v = jax.tree.map(lambda p: normal(*p.shape, seed=p.size), variables["params"])
    names = dict(jax=jax, optax=optax, model=model, variables=variables, x=x, y=y, v=v)

    def run() -> dict:
        scope = dict(names)
        exec(compile(readme_example(), "README.md", "exec"), scope)
        return {"hvp": scope["hvp"], "meta_gradient": scope["meta_gradient"]}

    ours = run()
    with ops.portable():
        theirs = run()
    assert_close(ours, theirs, rtol=1e-3)

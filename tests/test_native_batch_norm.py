"""zoo.ops.batch_norm_*: oneDNN's batch normalisation equals XLA's, gradients included.

Tolerances, relative to the largest magnitude of the reference: float32 1e-5 (the libraries
sum in different orders); bfloat16 2e-2 (one bf16 rounding of the output). The reference is the
same arithmetic traced under `portable()`, which keeps every kernel on XLA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import zoo
from zoo import ops
from zoo.ops import batch_norm, native

NATIVE = ops.native_available()
needs_native = pytest.mark.skipif(
    not NATIVE, reason="the oneDNN extension is not built or not loadable here (XLA path only)"
)
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
EPSILON = 1e-5
# NHWC maps (odd sizes, one image, one pixel), then the other ranks a BatchNorm takes.
SHAPES = [(4, 7, 5, 16), (1, 9, 9, 3), (6, 1, 1, 32), (32, 10), (3, 5, 8)]


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-12))


def operands(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, dtype)
    scale, bias, mean = (jnp.asarray(rng.standard_normal(channels), jnp.float32) for _ in "abc")
    var = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
    return x, scale, bias, mean, var


def training_loss(x, scale, bias, relu=False):
    # Nonlinear in every output, the statistics included, so each cotangent is nonzero.
    y, mean, var = ops.batch_norm_training(x, scale, bias, EPSILON, relu=relu)
    loss = jnp.sum(jnp.sin(y.astype(jnp.float32))) + jnp.sum(mean**2) + jnp.sum(jnp.cos(var))
    return loss, (y, mean, var)


def inference_loss(x, mean, var, scale, bias, relu=False):
    y = ops.batch_norm_inference(x, mean, var, scale, bias, EPSILON, relu=relu)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y


def on_both_paths(loss, *args):
    """(native, XLA) values, outputs and gradients of every argument, jitted."""
    run = jax.jit(jax.value_and_grad(loss, tuple(range(len(args))), has_aux=True))
    ours = run(*args)
    with ops.portable():
        theirs = run(*args)
    return ours, theirs


def assert_close(ours, theirs, dtype):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relative_error(a, b) < TOLERANCE[dtype]


@needs_native
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_training_mode_and_its_gradients_equal_xla(shape, dtype, relu):
    x, scale, bias, _, _ = operands(shape, dtype)
    loss = functools.partial(training_loss, relu=relu)
    assert_close(*on_both_paths(loss, x, scale, bias), dtype)


@needs_native
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:4], ids=str)
def test_inference_mode_and_its_gradients_equal_xla(shape, dtype, relu):
    x, scale, bias, mean, var = operands(shape, dtype)
    loss = functools.partial(inference_loss, relu=relu)
    assert_close(*on_both_paths(loss, x, mean, var, scale, bias), dtype)


def assert_same_non_finite_values(ours, theirs, dtype):
    """NaN and each infinity where XLA has them; the finite values within the tolerance."""
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    infinite, finite = np.isinf(theirs), np.isfinite(theirs)
    np.testing.assert_array_equal(ours[infinite], theirs[infinite])
    assert relative_error(ours[finite], theirs[finite]) < TOLERANCE[dtype]


@needs_native
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_nans_and_infinities_come_out_where_xla_has_them(dtype, relu):
    # oneDNN's fused ReLU is x86's max, which answers 0 for a NaN: a NaN pixel vanished from
    # ResNet-20's outputs in both modes, and the outputs of a diverged network were finite.
    x, scale, bias, mean, var = operands((4, 7, 5, 16), dtype)
    x = x.at[0, 1, 2, 3].set(jnp.nan).at[1, 2, 3, 4].set(jnp.inf).at[2, 3, 4, 5].set(-jnp.inf)
    scale, bias = scale.at[6].set(jnp.nan).at[10].set(jnp.inf), bias.at[7].set(jnp.nan)
    mean, var = mean.at[8].set(jnp.nan).at[11].set(-jnp.inf), var.at[9].set(jnp.inf)
    bias = bias.at[12].set(-jnp.inf)
    training = functools.partial(ops.batch_norm_training, epsilon=EPSILON, relu=relu)
    inference = functools.partial(ops.batch_norm_inference, epsilon=EPSILON, relu=relu)
    for run, args in ((training, (x, scale, bias)), (inference, (x, mean, var, scale, bias))):
        ours = jax.jit(run)(*args)
        with ops.portable():
            theirs = jax.jit(run)(*args)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            assert_same_non_finite_values(a, b, dtype)


@needs_native
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_fused_relu_leaves_xla_no_pass_over_the_activations(dtype):
    # The ReLU and its gradient's mask live in oneDNN's kernels (the mask as its workspace).
    x, scale, bias, _, _ = operands((4, 8, 8, 16), dtype)

    def loss(x, scale, bias):
        return jnp.sum(ops.batch_norm_training(x, scale, bias, EPSILON, relu=True)[0])

    hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, scale, bias).as_text()
    assert hlo.count("zoo_onednn_batch_norm_") == 2
    assert not any(op in hlo for op in ("maximum", "select", "compare")), hlo
    # The values are relu(batch norm) exactly (the gradients: the tests above).
    y = ops.batch_norm_training(x, scale, bias, EPSILON, relu=True)[0]
    plain = jax.nn.relu(ops.batch_norm_training(x, scale, bias, EPSILON)[0])
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(plain, np.float32))


@needs_native
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_train_step_runs_both_directions_on_onednn(dtype):
    # bf16 has no oneDNN batch-norm kernel without AVX-512: it widens to the float32 one.
    x, scale, bias, mean, var = operands((4, 8, 8, 16), dtype)
    hlo = jax.jit(jax.grad(lambda *a: training_loss(*a)[0], (0, 1, 2))).lower(x, scale, bias)
    assert hlo.as_text().count("zoo_onednn_batch_norm_") == 2
    hlo = jax.jit(jax.grad(lambda *a: inference_loss(*a)[0])).lower(x, mean, var, scale, bias)
    assert "zoo_onednn_batch_norm_inference" in hlo.as_text()
    assert "zoo_onednn_batch_norm_backward" in hlo.as_text()


@needs_native
@pytest.mark.parametrize("channels", [24, 72, 80, 120])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_channels_off_the_vector_width_skip_onednns_slower_kernels(dtype, channels):
    # MobileNets' 72 or 120 channels: on AVX-512 oneDNN 3.2 picks its AVX2 kernel (float32),
    # faster than XLA's ops in training mode only, or a generic loop (bf16), slower in both
    # modes; 80 channels get the AVX-512 kernel.
    shape = (4, 8, 8, channels)
    full = (4, 8, 8, -(-channels // 16) * 16)

    def implementation(kind, on_shape, kernel_dtype):
        config = batch_norm._config(kind, on_shape, kernel_dtype, EPSILON, False, 1)
        return native.implementation(native.BATCH_NORM, kind, config)

    def jit_kernel(kind, kernel_dtype):
        found, name = implementation(kind, shape, kernel_dtype)
        return found and not name.endswith(":any")

    dtypes = {dtype, jnp.float32}  # bf16 without a kernel of its own: float32's, widened
    x, scale, bias, mean, var = operands(shape, dtype)
    training = jax.jit(jax.grad(lambda *a: training_loss(*a)[0], (0, 1, 2)))
    on_onednn = "zoo_onednn_batch_norm_" in training.lower(x, scale, bias).as_text()
    assert on_onednn == any(jit_kernel(native.TRAINING, d) for d in dtypes)
    inference = jax.jit(lambda *a: inference_loss(*a)[0])
    on_onednn = "zoo_onednn_batch_norm_" in inference.lower(x, mean, var, scale, bias).as_text()
    assert on_onednn == any(
        jit_kernel(native.INFERENCE, d)
        and implementation(native.INFERENCE, shape, d) == implementation(native.INFERENCE, full, d)
        for d in dtypes
    )
    ours = training(x, scale, bias)
    with ops.portable():
        theirs = jax.jit(jax.grad(lambda *a: training_loss(*a)[0], (0, 1, 2)))(x, scale, bias)
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b) < TOLERANCE[dtype]


@needs_native
def test_statistics_with_a_zero_cotangent_add_nothing_to_the_gradient():
    # A train step only reads the statistics into the running averages (a zero cotangent):
    # the gradient is then oneDNN's alone, with no XLA pass over the activations added.
    x, scale, bias, _, _ = operands((4, 8, 8, 16), jnp.float32)

    def loss(x, scale, bias):
        y, mean, var = ops.batch_norm_training(x, scale, bias, EPSILON)
        return jnp.sum(y**2), (mean, var)

    hlo = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True)).lower(x, scale, bias).as_text()
    gradient_only = [line for line in hlo.splitlines() if "f32[4,8,8,16]" in line]
    assert not any("subtract" in line for line in gradient_only), gradient_only


@needs_native
def test_vmap_over_an_extra_axis():
    x, scale, bias, _, _ = operands((3, 2, 6, 6, 8), jnp.float32)

    def loss(x):
        return jnp.sum(jnp.sin(ops.batch_norm_training(x, scale, bias, EPSILON)[0]))

    run = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    ours = run(x)
    with ops.portable():
        theirs = run(x)
    assert_close(ours, theirs, jnp.float32)


def test_portable_traces_no_custom_call_and_float16_stays_on_xla():
    x, scale, bias, _, _ = operands((4, 8, 8, 16), jnp.float32)
    with ops.portable():
        hlo = jax.jit(jax.grad(lambda *a: training_loss(*a)[0])).lower(x, scale, bias)
    assert "zoo_onednn" not in hlo.as_text()
    assert batch_norm._plan(x.astype(jnp.float16), EPSILON, (0, 2)) is None  # no fp16 kernels


@needs_native
def test_a_resnet_train_step_equals_the_xla_path():
    model = zoo.create_model("resnet20", stage_sizes=(1, 1, 1))  # ResNet-8: compiles faster
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)

    def loss(params):
        logits, updates = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.sin(logits)), (logits, updates)

    ours, theirs = on_both_paths(loss, variables["params"])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert relative_error(a, b) < 1e-4


@needs_native
def test_a_train_step_on_a_one_device_mesh_with_explicit_axes_runs_on_onednn():
    # jax.make_mesh's axes are Explicit: the batch's sharding is part of its type, which a
    # custom call's result lacks. The logits came back typed unsharded, and grad rejected the
    # sharded labels' cotangent (ValueError: Expected cotangent type float32[4,10]).
    mesh = jax.make_mesh((1,), ("data",))
    model = zoo.create_model("resnet20", stage_sizes=(1, 1, 1))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    labels = jnp.arange(4)
    split, replicated = (jax.sharding.NamedSharding(mesh, P(*spec)) for spec in (["data"], []))
    x, y = jax.device_put((images, labels), split)
    variables = jax.device_put(model.init(jax.random.key(0), images), replicated)

    def step(x, y):
        def loss(params):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        return jax.value_and_grad(loss, has_aux=True)(variables["params"])

    hlo = jax.jit(step).lower(x, y).as_text()
    assert "zoo_onednn_conv" in hlo and "zoo_onednn_batch_norm" in hlo
    ours, unsharded = jax.jit(step)(x, y), jax.jit(step)(images, labels)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(unsharded), strict=True):
        assert relative_error(a, b) < 1e-6


@needs_native
def test_inside_shard_map_the_gradients_have_their_primals_types():
    # A custom call's results vary over no manual axis, x varies over "data": the gradient of x
    # must too (the loss uses y only, as a train step does, so no XLA arithmetic on x is added).
    x, scale, bias, _, _ = operands((4, 7, 5, 16), jnp.float32)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))

    def local(x, scale, bias):
        def loss(x, scale, bias):
            y, _, _ = ops.batch_norm_training(x, scale, bias, EPSILON)
            return jnp.sum(jnp.sin(y))

        loss, grads = jax.value_and_grad(loss, (0, 1, 2))(x, scale, bias)
        return loss[None], grads

    specs = dict(in_specs=(P("data"), P(), P()), out_specs=(P("data"), (P("data"), P(), P())))
    run = jax.jit(jax.shard_map(local, mesh=mesh, **specs))
    assert "zoo_onednn_batch_norm_backward" in run.lower(x, scale, bias).as_text()
    ours = run(x, scale, bias)
    with ops.portable():
        theirs = run(x, scale, bias)
    assert_close(ours, theirs, jnp.float32)


@needs_native
def test_passes_under_a_mebibyte_run_on_one_thread(monkeypatch):
    monkeypatch.setattr(batch_norm.backend, "team_size", lambda: 2)
    for shape, dtype, threads in [
        ((8, 32, 32, 16), jnp.float32, 1),  # 512 KiB
        ((128, 8, 8, 64), jnp.bfloat16, 2),  # 1 MiB
        ((32, 32, 32, 64), jnp.float32, 2),  # 8 MiB
    ]:
        plan = batch_norm._plan(jnp.zeros(shape, dtype), EPSILON, (0, 2))
        assert plan.num_threads == threads, (shape, dtype)


@needs_native
def test_bfloat16_on_float32_kernels_counts_float32_bytes(monkeypatch, without_bf16_kernels):
    monkeypatch.setattr(batch_norm.backend, "team_size", lambda: 2)
    x = jnp.zeros((128, 8, 8, 32), jnp.bfloat16)  # 512 KiB, widened to 1 MiB
    plan = batch_norm._plan(x, EPSILON, (0, 2))
    assert plan.kernels[0] == plan.kernels[2] == jnp.float32
    assert plan.num_threads == 2

"""Winograd F(4x4, 3x3) in float32 (`csrc/winograd_conv.cc`) and F(2x2, 3x3) in bf16
(`csrc/winograd_bf16_conv.cc`): which convolutions run them, and that they equal float64's
convolution within their rounding.

float32's tolerance, relative to the largest magnitude of the float64 result: 5e-5. Measured on
AMD Zen 5 at 16-512 channels: 3e-6 to 1.2e-5 (oneDNN's direct kernels: 4e-7 to 2e-6), growing
with the channels each output sums. bf16's, against float64's convolution of the same bf16
operands: 6e-3 of the result's RMS (RMS error) and 1e-2 of its largest magnitude (largest
error). Measured at 16-512 channels: 3.6e-3 to 4.0e-3 and up to 4.7e-3; a direct bf16
convolution, which rounds only its result to bf16: 1.7e-3 and up to 3e-3.
"""

from __future__ import annotations

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from test_native_conv import NHWC, relative_error, run_python

import zoo
from zoo import ops
from zoo.ops import conv, native

TOLERANCE = 5e-5
needs_winograd = pytest.mark.skipif(
    not (ops.native_available() and native.winograd_available()),
    reason="Winograd runs on CPUs with AVX-512, with the extension built",
)
needs_winograd_bf16 = pytest.mark.skipif(
    not (ops.native_available() and native.winograd_bf16_available()),
    reason="bf16 Winograd runs on CPUs with AVX512-BF16, with the extension built",
)
SAME = ((1, 1), (1, 1))


def arguments(**overrides) -> dict:
    return dict(window_strides=(1, 1), padding=SAME, dimension_numbers=NHWC) | overrides


def native_targets(fn, *operands) -> set[str]:
    return {
        target
        for target in (
            native.WINOGRAD_TARGET,
            native.WINOGRAD_WEIGHTS_TARGET,
            *native.CONV_TARGETS.values(),
        )
        if target in jax.jit(fn).lower(*operands).as_text()
    }


def value_and_gradients(conv_fn, x, kernel, **overrides):
    def loss(x, kernel):
        y = conv_fn(x, kernel, **arguments(**overrides))
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, kernel)
    return y, *grads


def operands(batch, height, width, channels, features, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, channels))
    kernel = rng.standard_normal((3, 3, channels, features)) / np.sqrt(9 * channels)
    return x, kernel


# (batch, height, width, channels, features): a single tile, partial tiles at the bottom and
# right, several blocks of tiles per thread, and transformed kernels too large for blocks
# (272 x 272 > 256 x 256), whose steps run on chunks of 512 tiles: one chunk, and two (the
# weight gradient's sums added up over them). From 64 channels the weight gradient too.
CASES = [
    (1, 4, 4, 16, 16),
    (2, 7, 7, 32, 16),
    (3, 9, 12, 64, 80),
    (9, 16, 16, 16, 16),
    (2, 8, 8, 272, 64),
    (1, 8, 8, 272, 272),
    (129, 8, 8, 272, 256),
]


@needs_winograd
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_both_gradients_equal_float64(case):
    x, kernel = operands(*case)
    x32, kernel32 = x.astype(np.float32), kernel.astype(np.float32)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(ops.conv_general_dilated(x, kernel, **arguments())))

    weights = (
        native.WINOGRAD_WEIGHTS_TARGET
        if min(case[3:]) >= conv.WINOGRAD_WEIGHT_GRADIENT_CHANNELS
        else native.CONV_TARGETS[native.BACKWARD_WEIGHTS]
    )
    assert native_targets(jax.grad(loss, (0, 1)), x32, kernel32) == {
        native.WINOGRAD_TARGET,
        weights,
    }
    ours = value_and_gradients(ops.conv_general_dilated, x32, kernel32)
    # XLA:CPU's float64 convolutions run at a few GFLOP/s: the two-chunk case, 5 G
    # multiply-adds a direction, takes XLA's float32 ones, within 2e-6 of them, instead.
    with jax.enable_x64(x.size * kernel.shape[-1] < 2**26):
        exact = value_and_gradients(lax.conv_general_dilated, x, kernel)
    for name, a, b in zip(("output", "d_lhs", "d_rhs"), ours, exact, strict=True):
        assert a.shape == b.shape and a.dtype == jnp.float32, name
        assert relative_error(a, b) < TOLERANCE, name


@needs_winograd
@pytest.mark.parametrize(
    "how",
    ["precision=highest", "precision=float32", "precision=(highest, default)", "config"],
)
def test_asking_for_float32_throughout_keeps_the_direct_kernels(how):
    x, kernel = (jnp.asarray(a, jnp.float32) for a in operands(2, 8, 8, 16, 16))
    precision = {
        "precision=highest": "highest",
        "precision=float32": lax.Precision.HIGHEST,
        "precision=(highest, default)": (lax.Precision.HIGHEST, lax.Precision.DEFAULT),
        "config": None,
    }[how]

    def fn(x, kernel):
        return ops.conv_general_dilated(x, kernel, precision=precision, **arguments())

    jitted = jax.jit(fn)
    if how == "config":  # jit's cache key holds the setting: traced again inside it
        assert native.WINOGRAD_TARGET in jitted.lower(x, kernel).as_text()
        with jax.default_matmul_precision("float32"):
            assert native_targets(fn, x, kernel) == {native.CONV_TARGETS[native.FORWARD]}
            hlo = jitted.lower(x, kernel).as_text()
    else:
        hlo = jitted.lower(x, kernel).as_text()
    assert native.WINOGRAD_TARGET not in hlo
    assert native.CONV_TARGETS[native.FORWARD] in hlo


@needs_winograd
@pytest.mark.parametrize(
    "shape, options, runs",
    [
        ((2, 7, 7, 16), {}, True),  # 77% of its 4x4 output tiles inside the image
        ((2, 13, 13, 16), {}, False),  # 66%: measured a tie
        ((2, 8, 8, 16), {"window_strides": (2, 2)}, False),
        ((2, 8, 8, 16), {"padding": "VALID"}, False),
        ((2, 8, 8, 16), {"padding": ((2, 0), (1, 1))}, False),
        ((2, 8, 8, 16), {"rhs_dilation": (2, 2)}, False),
        ((2, 8, 8, 16), {"feature_group_count": 2}, False),
        ((2, 8, 8, 8), {}, False),  # channels not in multiples of 16
        ((1, 4, 4, 528), {}, False),  # more channels than measured
        ((2, 8, 8, 16), {"dtype": jnp.bfloat16}, False),  # bf16: F(2x2, 3x3) from 64 channels
    ],
    ids=str,
)
def test_only_3x3_stride_1_same_float32_convolutions_of_16_to_512_channels_run_it(
    shape, options, runs
):
    options = dict(options)
    dtype = options.pop("dtype", jnp.float32)
    groups = options.get("feature_group_count", 1)
    x = jnp.ones(shape, dtype)
    kernel = jnp.ones((3, 3, shape[3] // groups, 16), dtype)

    def fn(x, kernel):
        return ops.conv_general_dilated(x, kernel, **arguments(**options))

    assert (native.WINOGRAD_TARGET in native_targets(fn, x, kernel)) == runs
    ours, theirs = fn(x, kernel), lax.conv_general_dilated(x, kernel, **arguments(**options))
    assert relative_error(ours, theirs) < (TOLERANCE if dtype == jnp.float32 else 2e-2)


@needs_winograd
def test_vmap_over_an_extra_axis_runs_it_per_slice():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 32)) / 12, jnp.float32)
    ours = jax.jit(jax.vmap(lambda x: ops.conv_general_dilated(x, kernel, **arguments())))(x)
    theirs = jax.vmap(lambda x: lax.conv_general_dilated(x, kernel, **arguments()))(x)
    assert relative_error(ours, theirs) < TOLERANCE


@needs_winograd
def test_resnet20_trains_on_it_as_float64_does():
    # Training mode on two images, where this untrained network is well conditioned: float32
    # gradients 4e-6 (oneDNN's direct kernels) and 9e-6 (Winograd) off float64. Not so in
    # inference mode, or on four images: there any float32 rounding flips ReLU masks and moves
    # them by up to 1%, the direct kernels' and XLA's own float32 path's too.
    model = zoo.create_model("resnet20")
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), jnp.asarray(x, jnp.float32))

    def step(model, variables, x):
        def loss(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(logits)), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

    hlo = jax.jit(lambda p: step(model, {**variables, "params": p}, x)).lower(variables["params"])
    assert native.WINOGRAD_TARGET in hlo.as_text()
    ours = step(model, variables, jnp.asarray(x, jnp.float32))
    with jax.enable_x64(True), ops.portable():
        wide = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        model64 = zoo.create_model("resnet20", dtype=jnp.float64, param_dtype=jnp.float64)
        exact = step(model64, wide, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(exact), strict=True):
        assert relative_error(a, b) < 1e-4


# (batch, height, width, channels, features) in bf16: a single tile, partial tiles, blocks of
# tiles per thread, and transformed kernels too large for blocks (272 x 272 > 256 x 256) on one
# chunk of 1024 tiles and on two.
BF16_CASES = [
    (1, 2, 2, 64, 64),
    (2, 6, 7, 64, 64),
    (3, 9, 12, 64, 80),
    (9, 16, 16, 64, 64),
    (1, 8, 8, 272, 272),
    (70, 8, 8, 272, 256),
]


def output_and_input_gradient(conv_fn, x, kernel, d_y, **options):
    y, vjp = jax.vjp(lambda x: conv_fn(x, kernel, **arguments(**options)), x)
    return y, vjp(d_y)[0]


@needs_winograd_bf16
@pytest.mark.parametrize("case", BF16_CASES, ids=str)
def test_bf16_forward_and_input_gradient_equal_float64_within_its_rounding(case):
    x, kernel = (jnp.asarray(a, jnp.bfloat16) for a in operands(*case))
    d_y = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape[:3] + kernel.shape[3:]))
    d_y = d_y.astype(jnp.bfloat16)
    ours = jax.jit(functools.partial(output_and_input_gradient, ops.conv_general_dilated))
    hlo = ours.lower(x, kernel, d_y).as_text()
    assert hlo.count(native.WINOGRAD_BF16_TARGET) >= 2 and "stablehlo.convolution" not in hlo
    with jax.enable_x64(True):
        wide = (np.asarray(a, np.float64) for a in (x, kernel, d_y))
        exact = output_and_input_gradient(lax.conv_general_dilated, *wide)
    for name, a, b in zip(("output", "d_lhs"), ours(x, kernel, d_y), exact, strict=True):
        assert a.shape == b.shape and a.dtype == jnp.bfloat16, name
        error = np.asarray(a, np.float64) - np.asarray(b)
        assert np.sqrt(np.mean(error**2)) < 6e-3 * np.sqrt(np.mean(np.asarray(b) ** 2)), name
        assert np.max(np.abs(error)) < 1e-2 * np.max(np.abs(b)), name


@needs_winograd_bf16
@pytest.mark.parametrize("precision", [None, "highest"])
def test_bf16_runs_it_from_64_channels_unless_asked_for_exact_products(precision):
    def targets(channels):
        x, kernel = (
            jnp.ones(shape, jnp.bfloat16) for shape in ((2, 8, 8, channels), (3, 3, channels, 64))
        )
        hlo = (
            jax.jit(lambda x, k: ops.conv_general_dilated(x, k, precision=precision, **arguments()))
            .lower(x, kernel)
            .as_text()
        )
        return native.WINOGRAD_BF16_TARGET in hlo

    assert targets(64) == (precision is None)
    assert not targets(32)


EIGHT_DEVICES = """
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from zoo import ops
    from zoo.ops import native
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((16, 8, 8, 64)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((3, 3, 64, 64)) / 24, jnp.float32)

    def gradients(conv):
        loss = lambda x, k: jnp.sum(jnp.sin(conv(
            x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
        return jax.jit(jax.grad(loss, (0, 1)))

    # Auto axes (custom_partitioning) and Explicit ones (jax.make_mesh's default: shard_map).
    for mesh in (Mesh(np.array(jax.devices()), ("data",)), jax.make_mesh((8,), ("data",))):
        x = jax.device_put(images, NamedSharding(mesh, P("data")))
        kernel = jax.device_put(weights, NamedSharding(mesh, P()))
        hlo = gradients(ops.conv_general_dilated).lower(x, kernel).compile().as_text()
        assert native.WINOGRAD_TARGET in hlo and "f32[2,8,8,64]{3,2,1,0} custom-call" in hlo
        assert native.WINOGRAD_WEIGHTS_TARGET in hlo and "all-reduce" in hlo  # shards' sums
        ours = gradients(ops.conv_general_dilated)(x, kernel)
        theirs = gradients(lax.conv_general_dilated)(x, kernel)
        for a, b in zip(ours, theirs):
            assert np.max(np.abs(a - b)) <= 5e-5 * np.max(np.abs(b))
        assert ours[0].sharding.is_equivalent_to(x.sharding, 4)
    print("eight devices ok")
"""


@needs_winograd
def test_eight_cpu_devices_run_it_on_their_own_shard_of_the_batch():
    done = run_python(EIGHT_DEVICES, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert done.returncode == 0, done.stderr
    assert "eight devices ok" in done.stdout


@needs_winograd_bf16
def test_bf16_keeps_onednn_where_its_forward_kernel_is_amx(monkeypatch):
    # Measured faster than oneDNN's AVX512-BF16 kernels only, not AMX's.
    real = native.implementation

    def amx(op, kind, config):
        found, name = real(op, kind, config)
        return found, ("brgconv:avx512_core_amx" if kind == native.FORWARD else name)

    def plan():
        conv.clear_plans()
        geometry = conv.Geometry(
            (2, 8, 8, 64), (3, 3, 64, 64), jnp.dtype(jnp.bfloat16), padding=SAME
        )
        return [kernel.name for kernel in conv.planned(geometry).kernels]

    assert plan()[:2] == ["winograd bf16"] * 2
    monkeypatch.setattr(native, "implementation", amx)
    assert plan()[:2] == ["onednn"] * 2
    monkeypatch.undo()
    conv.clear_plans()


# Both Winograd variants in one fresh process, in the given order, on shapes whose matmul plans
# have the same configuration (one tile row per thread block: 4 tiles of 64 channels each).
BOTH_VARIANTS = """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from zoo import ops
    from zoo.ops import conv
    pads, dn = ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC")
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 64, 64)).astype(np.float32) / 24
    shapes = {"float32": (1, 8, 8, 64), "bfloat16": (1, 4, 4, 64)}
    for name in sys.argv[1:]:
        dtype = jnp.dtype(name)
        geometry = conv.Geometry(shapes[name], kernel.shape, dtype, padding=pads)
        assert conv.planned(geometry).kernels[0].name.startswith("winograd")
        x = jnp.asarray(rng.standard_normal(shapes[name]), dtype)
        w = jnp.asarray(kernel, dtype)
        ours = ops.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)
        exact = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1),
                                         pads, dimension_numbers=dn, precision="highest")
        error = jnp.max(jnp.abs(ours.astype(jnp.float32) - exact)) / jnp.max(jnp.abs(exact))
        print(name, float(error))
"""


@needs_winograd_bf16
@pytest.mark.parametrize("order", [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_the_two_winograd_variants_never_share_a_matmul_plan(order):
    # The extension's plan cache is shared by the two variants (the same C++ types): the second
    # got the first's matmul, which oneDNN refused (bf16 after float32) or ran on the wrong
    # dtype, giving -inf (float32 after bf16).
    code = "import sys; sys.argv[1:] = " + repr(list(order)) + textwrap.dedent(BOTH_VARIANTS)
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = dict(line.split() for line in done.stdout.split("\n") if line)
    assert float(errors["float32"]) < 1e-4 and float(errors["bfloat16"]) < 2e-2, errors

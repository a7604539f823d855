"""zoo.ops.conv_general_dilated: oneDNN's convolutions equal XLA's, and every fallback works.

Tolerances, relative to the largest magnitude of XLA's result: float32 1e-5 (the two libraries
sum in different orders); bfloat16 2e-2 (one bf16 rounding of the output, 8 bits of mantissa).
The comparisons need the extension (skipped, with the reason, where it is not built); the
fallback tests run everywhere. Device counts and environment variables are fixed when JAX or
the zoo start, so those tests run in subprocesses.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import zoo
from zoo import ops
from zoo.ops import conv, native

NATIVE = ops.native_available()
needs_native = pytest.mark.skipif(
    not NATIVE, reason="the oneDNN extension is not built or not loadable here (XLA path only)"
)
NHWC = ("NHWC", "HWIO", "NHWC")
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}

# (batch, height, width, channels, kernel, features, stride, padding, dilation, groups)
CASES = [
    (2, 9, 9, 4, 3, 8, 1, ((1, 1), (1, 1)), 1, 1),
    (1, 11, 7, 6, 3, 6, 2, ((0, 2), (1, 0)), 1, 2),
    (3, 16, 16, 8, 3, 8, 4, "SAME", 2, 1),
    (2, 10, 13, 6, 5, 9, 2, "VALID", 1, 3),
    (1, 17, 17, 3, 7, 16, 2, ((3, 3), (3, 3)), 1, 1),
    (4, 8, 8, 16, 1, 32, 2, ((0, 0), (0, 0)), 1, 1),
    (2, 15, 12, 8, 3, 8, 1, ((2, 1), (0, 3)), 3, 4),
    (1, 5, 5, 2, 3, 4, 1, "SAME", 1, 2),
]


def relative_error(actual: jax.Array, expected: jax.Array) -> float:
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    return float(np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-12))


def operands(case, dtype, seed=0):
    n, h, w, c, k, o, *_, groups = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
    kernel = jnp.asarray(rng.standard_normal((k, k, c // groups, o)), dtype)
    return x, kernel


def conv_arguments(case) -> dict:
    *_, stride, padding, dilation, groups = case
    return dict(
        window_strides=(stride, stride),
        padding=padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=NHWC,
        feature_group_count=groups,
    )


def value_and_gradients(conv, case, x, kernel):
    """The convolution and both gradients of a nonlinear loss of it, jitted."""

    def loss(x, kernel):
        y = conv(x, kernel, **conv_arguments(case))
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, kernel)
    return y, *grads


@needs_native
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_forward_and_gradients_equal_xla(case):
    x, kernel = operands(case, jnp.float32)
    ours = value_and_gradients(ops.conv_general_dilated, case, x, kernel)
    theirs = value_and_gradients(lax.conv_general_dilated, case, x, kernel)
    for name, a, b in zip(("output", "d_lhs", "d_rhs"), ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert relative_error(a, b) < TOLERANCE[jnp.float32], name


@needs_native
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_resnet_convolution_runs_all_three_directions_on_native_kernels(dtype):
    # Without bf16 kernels (AVX2 only), bf16 fell back to XLA's convolution; oneDNN's float32
    # kernels now compute it from the exactly widened operands. In float32, on a CPU that runs
    # it, the forward and input-gradient convolutions are Winograd's (tests/test_winograd.py).
    case = (2, 8, 8, 16, 3, 16, 1, ((1, 1), (1, 1)), 1, 1)
    x, kernel = operands(case, dtype)

    def loss(x, kernel):
        y = ops.conv_general_dilated(x, kernel, **conv_arguments(case))
        return jnp.sum(y.astype(jnp.float32) ** 2)

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, kernel).as_text()
    targets = list(native.CONV_TARGETS.values())
    if dtype == jnp.float32 and native.winograd_available():
        targets = [native.WINOGRAD_TARGET, native.CONV_TARGETS[native.BACKWARD_WEIGHTS]]
    for target in targets:
        assert target in hlo
    assert "stablehlo.convolution" not in hlo


@needs_native
@pytest.mark.parametrize("channels", [128, 512])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_wide_weight_gradients_run_on_xla_where_it_was_measured_faster(dtype, channels):
    case = (2, 6, 6, channels, 3, channels, 1, ((1, 1), (1, 1)), 1, 1)
    x, kernel = operands(case, dtype)
    kernel = (kernel / np.sqrt(9 * channels)).astype(dtype)  # unit-scale outputs

    def loss(x, kernel):
        y = ops.conv_general_dilated(x, kernel, **conv_arguments(case))
        return jnp.sum(y.astype(jnp.float32) ** 2)

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, kernel).as_text()
    pads = ((1, 1), (1, 1))
    plan = conv.planned(conv.Geometry(x.shape, kernel.shape, jnp.dtype(dtype), padding=pads))
    config = (2, 6, 6, channels, 3, 3, channels, 6, 6, *(1,) * 9, 0, plan.threads)
    _, name = native.implementation(native.CONV, native.BACKWARD_WEIGHTS, config)
    from_channels = conv.XLA_WEIGHT_GRADIENT_FROM.get(name, np.inf)
    on_xla = dtype == jnp.float32 and channels >= from_channels
    weights = native.CONV_TARGETS[native.BACKWARD_WEIGHTS]
    if plan.kernels[native.BACKWARD_WEIGHTS] is conv.BF16_WEIGHTS:  # test_bf16_weight_gradient
        weights = native.BF16_WEIGHTS_TARGET
    assert (weights not in hlo) == on_xla, name
    data = [native.CONV_TARGETS[native.FORWARD], native.CONV_TARGETS[native.BACKWARD_DATA]]
    if plan.kernels[native.FORWARD] in (conv.WINOGRAD_FLOAT32, conv.WINOGRAD_BF16):  # test_winograd
        data = [native.WINOGRAD_BF16_TARGET if dtype == jnp.bfloat16 else native.WINOGRAD_TARGET]
    assert all(target in hlo for target in data)
    ours = value_and_gradients(ops.conv_general_dilated, case, x, kernel)
    theirs = value_and_gradients(lax.conv_general_dilated, case, x, kernel)
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b) < TOLERANCE[dtype]


def planned(batch: int, channels: int, dtype) -> conv._Plan:
    """The plan of a 3x3 "SAME" convolution of batch x 32 x 32 x channels to channels."""
    shape, pads = (batch, 32, 32, channels), ((1, 1), (1, 1))
    geometry = conv.Geometry(shape, (3, 3, channels, channels), jnp.dtype(dtype), padding=pads)
    return conv.planned(geometry)


@needs_native
def test_bfloat16_on_float32_kernels_takes_float32s_thread_line(monkeypatch, without_bf16_kernels):
    monkeypatch.setattr(conv.backend, "team_size", lambda: 2)
    plan = planned(4, 32, jnp.bfloat16)  # 38 M multiply-adds: below bf16's line, above float32's
    assert plan.dtypes == (jnp.float32,) * 3
    assert plan.threads == 2
    assert planned(2, 16, jnp.bfloat16).threads == 1  # 0.3 M: below both


@needs_native
def test_short_convolutions_run_on_one_thread_long_ones_on_the_team(monkeypatch):
    monkeypatch.setattr(conv.backend, "team_size", lambda: 2)

    # 2x8x8x16 -> 16: 0.3 M multiply-adds; 4x32x32x32 -> 32: 38 M; 32x32x32x64 -> 64: 1.2 G.
    assert planned(2, 16, jnp.float32).threads == planned(2, 16, jnp.bfloat16).threads == 1
    assert planned(4, 32, jnp.float32).threads == 2
    bf16 = planned(4, 32, jnp.bfloat16)  # on bf16 kernels below their line, float32's above it
    assert bf16.threads == (1 if bf16.dtypes[0] == jnp.bfloat16 else 2)
    assert planned(32, 64, jnp.float32).threads == planned(32, 64, jnp.bfloat16).threads == 2

    x, kernel = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    same = functools.partial(
        ops.conv_general_dilated,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    assert "num_threads = 1" in jax.jit(same).lower(x, kernel).as_text()


@needs_native
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_bfloat16_equals_xla_or_falls_back(case):
    x, kernel = operands(case, jnp.bfloat16)
    ours = value_and_gradients(ops.conv_general_dilated, case, x, kernel)
    theirs = value_and_gradients(lax.conv_general_dilated, case, x, kernel)
    for name, a, b in zip(("output", "d_lhs", "d_rhs"), ours, theirs, strict=True):
        assert a.dtype == jnp.bfloat16, name
        assert relative_error(a, b) < TOLERANCE[jnp.bfloat16], name


@needs_native
@pytest.mark.parametrize(("kernel", "stride"), [(5, 1), (3, 2), (3, 1)])
def test_bfloat16_depthwise_directions_without_a_depthwise_kernel_run_in_float32(kernel, stride):
    """Where oneDNN's bf16 kernel for a direction of a depthwise convolution is a generic one
    (`conv.BF16_DEPTHWISE_WIDENS`), its float32 depthwise kernel runs it; the values are XLA's
    to bf16's rounding either way."""
    channels, pad = 32, (kernel - 1) // 2
    case = (2, 10, 10, channels, kernel, channels, stride, ((pad, pad),) * 2, 1, channels)
    x, weights = operands(case, jnp.bfloat16)
    geometry = conv.Geometry(
        x.shape,
        weights.shape,
        jnp.dtype(jnp.bfloat16),
        (stride,) * 2,
        ((pad, pad),) * 2,
        (1, 1),
        channels,
    )
    plan = conv.planned(geometry)
    for direction in native.CONV_TARGETS:
        _, name = native.implementation(
            native.CONV, direction, geometry.onednn_config(jnp.bfloat16, plan.threads)
        )
        widened = name in conv.BF16_DEPTHWISE_WIDENS
        assert plan.dtypes[direction] == (jnp.float32 if widened else jnp.bfloat16), name
    ours = value_and_gradients(ops.conv_general_dilated, case, x, weights)
    theirs = value_and_gradients(lax.conv_general_dilated, case, x, weights)
    for name, a, b in zip(("output", "d_lhs", "d_rhs"), ours, theirs, strict=True):
        assert a.dtype == jnp.bfloat16, name
        assert relative_error(a, b) < TOLERANCE[jnp.bfloat16], name


@needs_native
def test_vmap_over_an_extra_batch_axis():
    case = CASES[1]
    xs = jnp.stack([operands(case, jnp.float32, seed)[0] for seed in range(3)])
    _, kernel = operands(case, jnp.float32)

    def batched(conv):
        def loss(x, kernel):
            return jnp.sum(jnp.sin(conv(x, kernel, **conv_arguments(case))))

        return jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)), in_axes=(0, None)))(xs, kernel)

    (ours, (ours_dx, ours_dw)), (theirs, (theirs_dx, theirs_dw)) = (
        batched(ops.conv_general_dilated),
        batched(lax.conv_general_dilated),
    )
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(ours_dx, theirs_dx) < 1e-5
    assert relative_error(ours_dw, theirs_dw) < 1e-5


@needs_native
def test_inside_shard_map_the_gradients_have_their_primals_types():
    # A custom call's result varies over no manual axis; the image varies over "data", the
    # kernel does not: its gradient is the psum of the devices' parts, as JAX's own.
    case = CASES[1]
    x, kernel = operands(case, jnp.float32)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))

    def per_device(conv):
        def local(x, kernel):
            def loss(x, kernel):
                return jnp.sum(jnp.sin(conv(x, kernel, **conv_arguments(case))))

            loss, (d_x, d_kernel) = jax.value_and_grad(loss, (0, 1))(x, kernel)
            return loss[None], d_x, d_kernel

        specs = dict(in_specs=(P("data"), P()), out_specs=(P("data"), P("data"), P()))
        return jax.jit(jax.shard_map(local, mesh=mesh, **specs))

    assert (
        "zoo_onednn_conv_backward_weights"
        in per_device(ops.conv_general_dilated).lower(x, kernel).as_text()
    )
    ours, theirs = (
        per_device(ops.conv_general_dilated)(x, kernel),
        per_device(lax.conv_general_dilated)(x, kernel),
    )
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b) < 1e-5


def test_layouts_and_options_onednn_does_not_take_run_on_xla():
    x, kernel = jnp.ones((2, 4, 9, 9)), jnp.ones((8, 4, 3, 3))  # NCHW / OIHW
    nchw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    transposed = dict(
        window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=NHWC
    )
    nhwc_x, hwio_kernel = jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 8))
    for args, arguments in (((x, kernel), nchw), ((nhwc_x, hwio_kernel), transposed)):
        hlo = jax.jit(lambda a, b, kw=arguments: ops.conv_general_dilated(a, b, **kw))
        assert "zoo_onednn" not in hlo.lower(*args).as_text()
        np.testing.assert_array_equal(
            ops.conv_general_dilated(*args, **arguments),
            lax.conv_general_dilated(*args, **arguments),
        )


@pytest.mark.parametrize(
    "precision",
    [None, "highest", lax.Precision.HIGHEST, (lax.Precision.HIGH,) * 2, [lax.Precision.HIGH] * 2],
    ids=["none", "string", "enum", "tuple", "list"],
)
def test_every_form_of_precision_is_taken(precision):
    x, kernel = operands((2, 8, 8, 4, 3, 8, 1, "SAME", 1, 1), jnp.float32)
    arguments = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)

    def loss(conv, kernel, precision):
        return conv(x, kernel, precision=precision, **arguments).sum()

    ours = jax.grad(lambda k: loss(ops.conv_general_dilated, k, precision))(kernel)
    as_tuple = tuple(precision) if isinstance(precision, list) else precision  # lax's grad: a tuple
    theirs = jax.grad(lambda k: loss(lax.conv_general_dilated, k, as_tuple))(kernel)
    assert relative_error(ours, theirs) < 1e-5


def test_conv_module_has_nn_conv_parameters_and_values():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 3)), jnp.float32)
    settings = dict(features=8, kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)))
    params = nn.Conv(**settings).init(jax.random.key(0), x)
    assert jax.tree.structure(ops.Conv(**settings).init(jax.random.key(0), x)) == (
        jax.tree.structure(params)
    )
    ours = jax.jit(ops.Conv(**settings).apply)(params, x)
    theirs = jax.jit(nn.Conv(**settings).apply)(params, x)
    assert relative_error(ours, theirs) < 1e-5


def test_portable_traces_no_custom_calls_for_export():
    x, kernel = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    jitted = jax.jit(
        lambda x, kernel: ops.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=NHWC
        )
    )
    expected = jitted(x, kernel)  # traced outside first: portable() must trace again
    with ops.portable():
        exported = jax.export.export(jitted)(x, kernel)
    assert "stablehlo.custom_call" not in exported.mlir_module()
    np.testing.assert_allclose(exported.call(x, kernel), expected, rtol=1e-5)
    if NATIVE:  # outside portable(), the same function calls the extension, which export refuses
        assert "stablehlo.custom_call" in jitted.lower(x, kernel).as_text()
        with pytest.raises(ValueError, match="custom call"):
            jax.export.export(jitted)(x, kernel)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


XLA_ONLY = """
    import warnings
    warnings.simplefilter("always")
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    import zoo
    from zoo import ops
    x, kernel = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    f = lambda x, k: ops.conv_general_dilated(x, k, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hlo = jax.jit(jax.grad(lambda x, k: f(x, k).sum(), (0, 1))).lower(x, kernel).as_text()
    assert "stablehlo.custom_call" not in hlo, hlo
    np.testing.assert_array_equal(f(x, kernel), lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert not ops.native_available()
    print("xla path ok")
"""


def test_zoo_native_0_forces_xla_with_no_warning():
    done = run_python(XLA_ONLY, ZOO_NATIVE="0")
    assert done.returncode == 0, done.stderr
    assert "xla path ok" in done.stdout
    assert "Warning" not in done.stderr, done.stderr


def test_a_library_that_does_not_load_warns_once_and_runs_xla(tmp_path):
    done = run_python(XLA_ONLY, ZOO_DNNL_LIBRARY=str(tmp_path / "missing" / "libdnnl.so.3"))
    assert done.returncode == 0, done.stderr
    assert "xla path ok" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "NativeUnavailableWarning" in line]
    assert len(warnings) == 1, done.stderr
    assert "libdnnl.so.3 not found" in warnings[0] and "ZOO_NATIVE=0" in warnings[0]


STALE_EXTENSION = (
    """
    import os
    from pathlib import Path
    from zoo.ops import native
    native._extension_path = lambda: Path(os.environ["STALE_EXTENSION"])
"""
    + XLA_ONLY
)


@needs_native  # its oneDNN loads first
@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_an_extension_built_from_older_sources_warns_once_and_runs_xla(tmp_path):
    # An editable install keeps the extension it built; newer Python code looking up a handler
    # it lacks raised AttributeError at the first convolution.
    source, stale = tmp_path / "stale.c", tmp_path / "_onednn.so"
    source.write_text("int zoo_onednn_conv_config_fields(void) { return 21; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(stale)], check=True)
    done = run_python(STALE_EXTENSION, STALE_EXTENSION=str(stale))
    assert done.returncode == 0, done.stderr
    assert "xla path ok" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "NativeUnavailableWarning" in line]
    assert len(warnings) == 1, done.stderr
    assert "built from another version of csrc/" in warnings[0]
    assert "zoo_winograd_conv3x3" in warnings[0] and "reinstall" in warnings[0]


@needs_native
def test_the_extension_is_compiled_at_o3_whatever_python_was_built_with():
    # Debian's and Ubuntu's Pythons pass -O2 in their CFLAGS, which setuptools puts first; at
    # -O2 the extension's own loops were not vectorised (ResNet-20's bf16 train step 1.5x as
    # long). GCC records each unit's switches in its debug info, where there is some.
    readelf = shutil.which("readelf")
    library = native._extension_path()
    if readelf is None or library is None:
        pytest.skip("no readelf, or no extension file, to read the switches from")
    info = subprocess.run(
        [readelf, "--debug-dump=info", str(library)], capture_output=True, text=True, check=True
    ).stdout
    producers = [line for line in info.splitlines() if "DW_AT_producer" in line and "GNU C" in line]
    if not producers:
        pytest.skip("built without debug information")
    for producer in producers:
        assert re.findall(r" -O(\S*)", producer)[-1] == "3", producer


EIGHT_DEVICES = """
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import zoo
    from zoo import ops
    assert jax.local_device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)

    def gradients(conv):
        def loss(x, k):
            y = conv(x, k, (2, 2), ((1, 0), (0, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                     feature_group_count=2)
            return jnp.sum(jnp.sin(y)), y
        return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))

    def second_order(conv):
        loss = lambda x, k: gradients(conv)(x, k)[0][0]
        hvp = lambda x, k: jax.jvp(jax.grad(loss, 1), (x, k), (x, k))[1]
        input_gradient_norm = lambda x, k: jnp.sum(jnp.square(jax.grad(loss)(x, k)))
        return jax.jit(lambda x, k: (hvp(x, k), jax.grad(input_gradient_norm, 1)(x, k)))

    weights = jnp.asarray(rng.standard_normal((3, 3, 4, 16)), jnp.float32)
    # Auto axes (custom_partitioning) and Explicit ones (jax.make_mesh's default: shard_map).
    for mesh in (Mesh(np.array(jax.devices()), ("data",)), jax.make_mesh((8,), ("data",))):
        kernel = jax.device_put(weights, NamedSharding(mesh, P()))
        # 16 images split 2 per device; 12 do not split evenly over 8 and run whole on each.
        for batch, per_device in ((16, 2), (12, 12)):
            images = jnp.asarray(rng.standard_normal((batch, 10, 10, 8)), jnp.float32)
            split = P("data" if batch % 8 == 0 else None)
            x = jax.device_put(images, NamedSharding(mesh, split))
            ours = gradients(ops.conv_general_dilated)
            hlo = ours.lower(x, kernel).compile().as_text()
            call = r"= (f32\\[[0-9,]*\\]).* custom-call.*custom_call_target=.(zoo_onednn_conv_\\w+)"
            calls = re.findall(call, hlo)
            assert sorted(name for _, name in calls) == [
                "zoo_onednn_conv_backward_data", "zoo_onednn_conv_backward_weights",
                "zoo_onednn_conv_forward"], calls
            shapes = {name: shape for shape, name in calls}
            assert shapes["zoo_onednn_conv_forward"] == f"f32[{per_device},5,5,16]", shapes
            assert shapes["zoo_onednn_conv_backward_data"] == f"f32[{per_device},10,10,8]", shapes
            if per_device < batch:  # the weight gradient: each shard's partial sum, all-reduced
                assert "all-reduce" in hlo and f"f32[{batch},10,10,8]" not in hlo, hlo
            ours, theirs = ours(x, kernel), gradients(lax.conv_general_dilated)(x, kernel)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
                assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), (a, b)
            assert ours[1][0].sharding.is_equivalent_to(x.sharding, 4)
            # Second order on the sharded batch: forward over reverse, reverse over reverse.
            ours = second_order(ops.conv_general_dilated)(x, kernel)
            theirs = second_order(lax.conv_general_dilated)(x, kernel)
            for a, b in zip(ours, theirs, strict=True):
                assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), (a, b)

        # vmap has no partitioning rule: it runs the kernels on the gathered batch, as XLA would.
        # (With Explicit axes JAX's own convolution cannot be vmapped over a sharded axis.)
        if mesh.axis_types[0] == jax.sharding.AxisType.Explicit:
            continue
        stacked = jax.device_put(jnp.asarray(rng.standard_normal((3, 16, 6, 6, 8)), jnp.float32),
                                 NamedSharding(mesh, P(None, "data")))
        conv = lambda conv: jax.jit(jax.vmap(lambda x: conv(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=2)))
        ours = conv(ops.conv_general_dilated)(stacked)
        theirs = conv(lax.conv_general_dilated)(stacked)
        assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs))

        # Inside a user's shard_map each device already holds its shard: the kernels run as is.
        def per_device(conv):
            def local(x, k):
                loss = lambda x, k: jnp.sum(jnp.sin(conv(
                    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    feature_group_count=2)))
                loss, grads = jax.value_and_grad(loss, (0, 1))(x, k)
                return loss[None], *grads
            return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()),
                                         out_specs=(P("data"), P("data"), P())))
        x = jax.device_put(jnp.asarray(rng.standard_normal((16, 6, 6, 8)), jnp.float32),
                           NamedSharding(mesh, P("data")))
        assert "zoo_onednn_conv_backward_weights" in per_device(
            ops.conv_general_dilated).lower(x, kernel).compile().as_text()
        ours = per_device(ops.conv_general_dilated)(x, kernel)
        theirs = per_device(lax.conv_general_dilated)(x, kernel)
        for a, b in zip(ours, theirs, strict=True):
            assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), (a, b)

    # A model's train step on the sharded batch (its batch norms on XLA) equals XLA's.
    model = zoo.create_model("resnet20", stage_sizes=(1, 1, 1))
    mesh = jax.make_mesh((8,), ("data",))
    images = jnp.asarray(rng.standard_normal((16, 16, 16, 3)), jnp.float32)
    x = jax.device_put(images, NamedSharding(mesh, P("data")))
    variables = jax.device_put(model.init(jax.random.key(0), images), NamedSharding(mesh, P()))
    def loss(params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
        return jnp.sum(jnp.sin(logits)), (logits, updates)
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    assert "zoo_onednn_conv" in step.lower(variables["params"]).compile().as_text()
    ours = step(variables["params"])
    with ops.portable():
        theirs = step(variables["params"])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b)), (a, b)
    print("eight devices ok")
"""


def test_eight_cpu_devices_run_onednn_on_their_own_shard_of_the_batch():
    done = run_python(EIGHT_DEVICES, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert done.returncode == 0, done.stderr
    assert "eight devices ok" in done.stdout


# The registered models with small inputs whose convolutions are nn.Conv layers.
MODELS = ["lenet5_1998", "conv_autoencoder", "resnet20"]


@needs_native
@pytest.mark.parametrize("name", MODELS)
def test_models_give_the_same_outputs_and_gradients_on_both_paths(name):
    # The XLA path runs in float64, where XLA:CPU computes everything itself. Its float32 path
    # is no reference: on an AMD Zen 4 (AVX512-BF16), jaxlib 0.10.2's YNNPACK fusions put
    # ResNet-20's float32 gradients there up to 1% off float64 (bench/README.md). So does
    # rounding of the order of Winograd's (tests/test_winograd.py): in inference mode these
    # gradients of an untrained network flip ReLU masks. So the kernels run as asked for float32
    # throughout: oneDNN's direct ones.
    model = zoo.create_model(name)
    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((2, *zoo.model_info(name).input_shape)),
        jnp.float32,
    )
    variables = model.init(jax.random.key(0), x)

    def run(model, variables, x):
        def loss(params):
            out = model.apply({**variables, "params": params}, x)
            return jnp.sum(jnp.sin(out)), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])

    step = jax.jit(lambda params: model.apply({**variables, "params": params}, x))
    with jax.default_matmul_precision("float32"):
        assert "zoo_onednn_conv" in step.lower(variables["params"]).as_text()
        ours = run(model, variables, x)
    with jax.enable_x64(True), ops.portable():
        wide = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        model64 = zoo.create_model(name, dtype=jnp.float64, param_dtype=jnp.float64)
        theirs = run(model64, wide, np.asarray(x, np.float64))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert relative_error(a, b) < 1e-4


@needs_native
def test_grouped_convolutions_keep_onednns_weight_gradient(monkeypatch):
    """Where XLA's weight gradient wins from some channels on (`XLA_WEIGHT_GRADIENT_FROM`, here
    pretended for this CPU's kernel from 16), a grouped convolution with that many channels per
    group keeps oneDNN's: XLA:CPU's grouped weight gradient is orders of magnitude slower."""
    pads = ((1, 1), (1, 1))
    plain = conv.Geometry((2, 8, 8, 64), (3, 3, 64, 64), jnp.dtype(jnp.float32), padding=pads)
    grouped = dataclasses.replace(plain, rhs_shape=(3, 3, 32, 64), groups=2)
    config = plain.onednn_config(jnp.float32, 1)  # small: planned on one thread
    _, name = native.implementation(native.CONV, native.BACKWARD_WEIGHTS, config)
    monkeypatch.setattr(conv, "XLA_WEIGHT_GRADIENT_FROM", {name: 16})
    conv.clear_plans()
    try:
        plain, grouped = conv.planned(plain), conv.planned(grouped)
    finally:
        conv.clear_plans()
    assert plain.kernels[native.BACKWARD_WEIGHTS] is None  # XLA's, as the table says
    assert grouped.dtypes == (jnp.float32,) * 3

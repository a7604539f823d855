"""The fast paths are the default, so they must compute what the plain paths compute.

- `zoo.ops.max_pool` (the `MaxPool` module), on the extension's kernels and on XLA's mask
  gradient: the same values as `nn.max_pool` and bit-for-bit the same gradient
  (select-and-scatter's choice), including ties, -inf inputs, NaNs, windows that
  overlap the padding, strides larger than the window, channel counts that fill no vector and
  bfloat16.
- `zoo.ops.add_relu` (ResNet's residual join), on the extension's kernels: bit for bit
  `nn.relu(x + shortcut)` and its gradient, signed zeros, subnormals, infinities and NaNs
  included, under vmap, a mesh and shard_map; anything else is that expression itself.
- `zoo.ops.initializers`: bit-for-bit JAX's initial values, in every dtype and fan mode used.
"""

from __future__ import annotations

import contextlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.models import resnet
from zoo.models.layers import MaxPool, explicit_padding
from zoo.ops import add_relu, backend, max_pool, native

# (window, stride, padding): ResNet's stem pool, AlexNet's, LeNet-style 2x2, stride 1, a stride
# larger than the window, padding of half the window, and a window of 1.
POOLS = [(3, 2, 1), (3, 2, 0), (2, 2, 0), (3, 1, 1), (2, 3, 0), (5, 3, 2), (4, 2, 1), (1, 2, 0)]


def reference(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    return nn.max_pool(x, (window, window), (stride, stride), explicit_padding(padding))


# Where the kernels run: the extension's (where it is loaded), or XLA's mask gradient.
needs_native = pytest.mark.skipif(
    not zoo.ops.native_available(), reason="the native extension is not built or loadable here"
)


@pytest.fixture(params=[pytest.param("native", marks=needs_native), "xla"])
def pool_path(request, monkeypatch):
    if request.param == "xla":
        monkeypatch.setenv("ZOO_NATIVE", "0")
    return request.param


def inputs(dtype: jnp.dtype, rng: np.random.Generator, channels: int = 3) -> jax.Array:
    """One batch of five kinds of image; pooling is per image, so one call tests all five."""
    shape = (1, 9, 10, channels)  # odd and even sizes, so some windows hang over the edge
    normal = rng.standard_normal(shape)
    ties = rng.integers(0, 3, shape)  # most windows hold several copies of their maximum
    # -inf ties the padding, so a window's first match may be a padded position.
    neg_inf = np.where(rng.random(shape) < 0.5, -np.inf, rng.integers(-2, 0, shape))
    zeros = np.where(rng.random(shape) < 0.5, 0.0, -0.0) - (rng.random(shape) < 0.2)  # +0 == -0
    # A NaN is every window's maximum that holds one, and no input's gradient.
    nans = np.where(rng.random(shape) < 0.1, np.nan, rng.standard_normal(shape))
    return jnp.asarray(np.concatenate([normal, ties, neg_inf, zeros, nans]), dtype)


def values_and_gradient(pool, window, stride, padding):
    @jax.jit
    def run(x, g):
        y, vjp = jax.vjp(lambda x: pool(x, window, stride, padding), x)
        return y, vjp(g)[0]

    return run


def as_f32(x: jax.Array) -> np.ndarray:
    return np.asarray(x.astype(jnp.float32))


def defined_max_pool(x, g, window: int, stride: int, padding: int):
    """(y, d_x) in float32 by the definitions, in numpy: NaN-propagating window maxima, and
    select-and-scatter's gradient (each window's choice scans it in row-major order, padding
    included, moving to each input it is not >=; gradients added in row-major window order)."""
    x, g = np.asarray(x, np.float32), np.asarray(g, np.float32)
    n, h, w, c = x.shape
    p, positions = padding, window * window
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-np.inf)
    y = np.empty(g.shape, np.float32)
    d_x = np.zeros(padded.shape, np.float32)
    images, channels = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for oh in range(g.shape[1]):
        for ow in range(g.shape[2]):
            top, left = oh * stride, ow * stride
            flat = padded[:, top : top + window, left : left + window].reshape(n, positions, c)
            y[:, oh, ow] = np.max(flat, axis=1)
            chosen, at = flat[:, 0], np.zeros((n, c), int)
            for q in range(1, positions):
                moves = ~(chosen >= flat[:, q])
                chosen, at = np.where(moves, flat[:, q], chosen), np.where(moves, q, at)
            d_x[images, top + at // window, left + at % window, channels] += g[:, oh, ow]
    return y, d_x[:, p : p + h, p : p + w]


def assert_same(actual, expected):
    np.testing.assert_array_equal(as_f32(actual), np.asarray(expected, np.float32))


@pytest.mark.parametrize(("window", "stride", "padding"), POOLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("channels", [3, 37], ids=["c3", "c37"])  # 37: full vectors and a rest
def test_max_pool_values_and_gradients_equal_the_definition(
    pool_path, window, stride, padding, dtype, channels
):
    rng = np.random.default_rng(window * 100 + stride * 10 + padding)
    x = inputs(dtype, rng, channels)
    out = reference(x, window, stride, padding)
    g = jnp.asarray(rng.standard_normal(out.shape), dtype)
    flax_y, flax_d_x = values_and_gradient(reference, window, stride, padding)(x, g)
    want_y, want_d_x = defined_max_pool(x, g, window, stride, padding)
    if dtype == jnp.bfloat16:  # pooled in float32: overlapping windows' gradients rounded once
        want_d_x = as_f32(jnp.asarray(want_d_x).astype(dtype))
    else:  # the definition is select-and-scatter's (nn.max_pool's own gradient)
        assert_same(flax_d_x, want_d_x)
    # XLA:CPU's reduce-window skips some NaNs (jaxlib 0.10.2: here in non-overlapping windows
    # of 37 channels); its values equal the definition's elsewhere.
    assert_same(flax_y[:4], want_y[:4])
    run = values_and_gradient(max_pool, window, stride, padding)
    assert (native.MAX_POOL_TARGETS[0] in run.lower(x, g).as_text()) == (pool_path == "native")
    y, d_x = run(x, g)
    checked = slice(None) if pool_path == "native" else slice(4)  # XLA's path: its reduce-window
    assert_same(y[checked], want_y[checked])
    assert_same(d_x, want_d_x)


def test_max_pool_module_gradient_equals_flax_under_jit(pool_path):
    # The module, jitted inside a loss, as a model uses it (ResNet's stem pool).
    x = jnp.asarray(np.random.default_rng(0).integers(0, 4, (4, 16, 16, 8)), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 8)), jnp.float32)

    def loss(pool, x):
        return jnp.sum(pool(x) * weights)

    got = jax.jit(jax.grad(lambda x: loss(lambda x: MaxPool(3, 2, 1).apply({}, x), x)))(x)
    want = jax.jit(jax.grad(lambda x: loss(lambda x: reference(x, 3, 2, 1), x)))(x)
    np.testing.assert_array_equal(got, want)
    # No select-and-scatter in the fast path (the op that is slow on XLA:CPU).
    hlo = jax.jit(jax.grad(lambda x: MaxPool(3, 2, 1).apply({}, x).sum())).lower(x).as_text()
    assert "select_and_scatter" not in hlo


def test_max_pool_other_inputs_fall_back_to_flax():
    ints = jnp.arange(2 * 6 * 6 * 1).reshape(2, 6, 6, 1)
    np.testing.assert_array_equal(max_pool(ints, 2, 2), reference(ints, 2, 2, 0))
    unbatched = jnp.arange(36.0).reshape(6, 6, 1)
    np.testing.assert_array_equal(max_pool(unbatched, 3, 2, 1), reference(unbatched, 3, 2, 1))


def test_max_pool_of_maps_smaller_than_the_window_is_empty():
    x = jnp.ones((2, 2, 2, 3), jnp.float32)
    y, d_x = values_and_gradient(max_pool, 3, 2, 0)(x, jnp.ones((2, 0, 0, 3), jnp.float32))
    assert y.shape == (2, 0, 0, 3) and d_x.shape == x.shape and not np.any(d_x)


def test_max_pool_windows_the_native_argmax_cannot_index_run_on_xla():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 18, 18, 4)), jnp.float32)
    g = jnp.ones((2, 2, 2, 4), jnp.float32)
    run = values_and_gradient(max_pool, 17, 1, 0)  # 289 positions: more than a byte holds
    assert native.MAX_POOL_TARGETS[0] not in run.lower(x, g).as_text()
    want = values_and_gradient(reference, 17, 1, 0)(x, g)
    for got, expected in zip(run(x, g), want, strict=True):
        np.testing.assert_array_equal(got, expected)


@needs_native
def test_max_pool_threads_count_the_bytes_its_kernels_read(monkeypatch):
    monkeypatch.setattr(backend, "team_size", lambda: 2)

    def threads(dtype) -> str:
        x = jnp.zeros((64, 16, 16, 16), dtype)  # 256 Ki elements: 1 MiB in float32
        text = jax.jit(lambda x: max_pool(x, 2, 2)).lower(x).as_text()
        assert native.MAX_POOL_TARGETS[0] in text
        return "num_threads = 2" if "num_threads = 2" in text else "num_threads = 1"

    assert threads(jnp.float32) == "num_threads = 2"
    assert threads(jnp.bfloat16) == "num_threads = 1"  # read as bf16: 512 KiB
    assert threads(jnp.float16) == "num_threads = 2"  # widened to float32


@needs_native
def test_max_pool_native_under_vmap_and_on_a_one_device_mesh():
    x = inputs(jnp.float32, np.random.default_rng(3), channels=8)
    g = jnp.asarray(np.random.default_rng(4).standard_normal((5, 5, 5, 8)), jnp.float32)
    want = values_and_gradient(reference, 3, 2, 1)(x, g)
    # vmap over an extra leading axis: the kernels run image batch by image batch.
    pooled = jax.vmap(values_and_gradient(max_pool, 3, 2, 1))(x[:, None], g[:, None])
    for got, expected in zip(pooled, want, strict=True):
        np.testing.assert_array_equal(got[:, 0], expected)
    # jax.make_mesh's Explicit axes put the batch's sharding in the types, which a custom
    # call's result lacks; inside shard_map the gradient must vary as its primal does.
    mesh = jax.make_mesh((1,), ("data",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    run = values_and_gradient(max_pool, 3, 2, 1)
    assert native.MAX_POOL_TARGETS[1] in run.lower(*jax.device_put((x, g), split)).as_text()
    for got, expected in zip(run(*jax.device_put((x, g), split)), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    spec = jax.sharding.PartitionSpec("data")
    mapped = jax.shard_map(
        run,
        mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
        in_specs=(spec, spec),
        out_specs=(spec, spec),
    )
    for got, expected in zip(jax.jit(mapped)(x, g), want, strict=True):
        np.testing.assert_array_equal(got, expected)


# --- zoo.ops.add_relu ----------------------------------------------------------------------


def add_relu_operands(dtype: jnp.dtype, shape: tuple[int, ...], seed: int):
    """x, shortcut and the output gradient, with every kind of value the join can meet: sums
    of either sign, exact zeros of both signs (-0 + -0 = -0), subnormals (XLA:CPU reads them
    as zero), +-inf, inf - inf and NaNs."""
    rng = np.random.default_rng(seed)
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, 1e-39, np.inf, -np.inf, np.nan, 1.0, -1.0])
    size = int(np.prod(shape))
    x = rng.standard_normal(size)
    shortcut = rng.standard_normal(size)
    pick = rng.random(size) < 0.3
    x[pick] = rng.choice(specials, int(pick.sum()))
    pick = rng.random(size) < 0.3
    shortcut[pick] = rng.choice(specials, int(pick.sum()))
    g = rng.standard_normal(size)
    return tuple(jnp.asarray(a.reshape(shape), dtype) for a in (x, shortcut, g))


def add_relu_and_gradients(join):
    @jax.jit
    def run(x, shortcut, g):
        y, vjp = jax.vjp(join, x, shortcut)
        return y, *vjp(g)

    return run


def reference_join(x, shortcut):
    return nn.relu(x + shortcut)


@needs_native
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
# A size no vector divides, and ResNet-20's first stage (several of the kernels' chunks).
@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (128, 32, 32, 16)], ids=["odd", "resnet20"])
def test_add_relu_equals_flax_bit_for_bit(dtype, shape):
    x, shortcut, g = add_relu_operands(dtype, shape, seed=shape[0])
    run = add_relu_and_gradients(add_relu)
    hlo = run.lower(x, shortcut, g).as_text()
    assert all(target in hlo for target in native.ADD_RELU_TARGETS)
    want = [as_f32(a) for a in add_relu_and_gradients(reference_join)(x, shortcut, g)]
    # relu of a NaN sum is NaN (lax.max propagates NaN), whatever flags the process runs with:
    # XLA:CPU's YNNPACK elementwise fusions give 0 for arrays of 4096 elements or more.
    nan_sum = np.isnan(as_f32(x + shortcut))
    want[0] = np.where(nan_sum, np.nan, want[0])
    for got, expected in zip(run(x, shortcut, g), want, strict=True):
        assert got.dtype == dtype
        np.testing.assert_array_equal(as_f32(got), expected)  # NaN where NaN; +0 is not -0:
        numbers = ~np.isnan(expected)
        np.testing.assert_array_equal(
            np.signbit(as_f32(got)[numbers]), np.signbit(expected[numbers])
        )


def test_add_relu_other_operands_are_flaxs_relu_of_the_sum():
    x = jnp.arange(-6.0, 6.0).reshape(3, 4)
    cases = [
        (x, jnp.ones((4,))),  # broadcasting
        (x, x.astype(jnp.bfloat16)),  # mixed dtypes
        (x.astype(jnp.float16), x.astype(jnp.float16)),  # a dtype the kernels do not take
        (jnp.float32(1.0), jnp.float32(-2.0)),  # scalars: no batch
    ]
    for a, b in cases:
        run = jax.jit(add_relu)
        assert "zoo_add_relu" not in run.lower(a, b).as_text()
        np.testing.assert_array_equal(run(a, b), reference_join(a, b))
    with zoo.ops.portable():
        assert "zoo_add_relu" not in jax.jit(add_relu).lower(x, x).as_text()


@needs_native
def test_add_relu_under_vmap_on_a_one_device_mesh_and_in_shard_map():
    x, shortcut, g = add_relu_operands(jnp.float32, (4, 6, 6, 8), seed=5)
    want = add_relu_and_gradients(reference_join)(x, shortcut, g)
    stacked = jax.vmap(add_relu_and_gradients(add_relu))(x[:, None], shortcut[:, None], g[:, None])
    for got, expected in zip(stacked, want, strict=True):
        np.testing.assert_array_equal(got[:, 0], expected)
    # A shortcut the same for every vmapped batch (not batched): the kernel sees it broadcast.
    shared = jax.vmap(add_relu, in_axes=(0, None))(jnp.stack([x, -x]), shortcut)
    np.testing.assert_array_equal(
        shared, jnp.stack([reference_join(x, shortcut), reference_join(-x, shortcut)])
    )
    mesh = jax.make_mesh((1,), ("data",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    run = add_relu_and_gradients(add_relu)
    assert (
        native.ADD_RELU_TARGETS[1] in run.lower(*jax.device_put((x, shortcut, g), split)).as_text()
    )
    for got, expected in zip(run(*jax.device_put((x, shortcut, g), split)), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    spec = jax.sharding.PartitionSpec("data")
    mapped = jax.shard_map(
        run,
        mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)),
        in_specs=(spec, spec, spec),
        out_specs=(spec, spec, spec),
    )
    for got, expected in zip(jax.jit(mapped)(x, shortcut, g), want, strict=True):
        np.testing.assert_array_equal(got, expected)


@needs_native
def test_resnet_blocks_join_on_the_kernels(monkeypatch):
    # Every block ends in the native join (ResNet-20: 9 blocks), forward and backward, and the
    # train step's gradients are bit for bit those of the same step joining on XLA. (Not in
    # bf16: XLA:CPU may keep in float32 an intermediate the program rounds to bf16, its
    # `--xla_allow_excess_precision`; one bias gradient of this step differed by an ulp.)
    model = zoo.create_model("resnet20", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)

    def gradients():
        def loss(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(logits**2)

        return jax.jit(jax.grad(loss))

    step = gradients()
    hlo = step.lower(variables["params"]).compile().as_text()
    for target in native.ADD_RELU_TARGETS:
        assert hlo.count(f'custom_call_target="{target}"') == 9, target
    ours = step(variables["params"])
    monkeypatch.setattr(resnet, "add_relu", reference_join)
    step = gradients()
    assert "zoo_add_relu" not in step.lower(variables["params"]).compile().as_text()
    theirs = step(variables["params"])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


# --- zoo.ops.initializers ------------------------------------------------------------------

INITIALIZER_CASES = [  # (shape, scale, mode, distribution, in_axis, out_axis)
    ((3, 3, 64, 64), 2.0, "fan_out", "normal", -2, -1),  # the ResNets' He normal
    ((7, 7, 3, 64), 1.0, "fan_in", "truncated_normal", -2, -1),  # nn.Conv's LeCun normal
    ((5, 5, 6), 1.0, "fan_in", "truncated_normal", (0, 1), ()),  # LeNet-1998's C3
    ((300, 100), 1.0, "fan_avg", "uniform", -2, -1),
    ((4095, 1), 1.0, "fan_in", "truncated_normal", -2, -1),  # just under YNN_FROM: small chunks
    ((64, 64), 1.0, "fan_in", "truncated_normal", -2, -1),  # YNN_FROM exactly
    ((3, 3, 100, 100), 2.0, "fan_out", "normal", -2, -1),  # a partial second chunk
    ((3, 3, 256, 256), 1.0, "fan_in", "truncated_normal", -2, -1),  # nine whole chunks
]
INITIALIZER_KEYS = {
    "key": lambda: jax.random.key(3),
    "folded": lambda: jax.random.fold_in(jax.random.key(1), 7),  # as Flax derives its keys
    "raw-uint32": lambda: jax.random.PRNGKey(5),
    "rbg": lambda: jax.random.key(3, impl="rbg"),  # not threefry: JAX's own draw
}


def assert_draws_jaxs_values(case, dtype, key):
    shape, *arguments = case
    ours = zoo.ops.initializers.variance_scaling(*arguments)(key, shape, dtype)
    theirs = jax.nn.initializers.variance_scaling(*arguments)(key, shape, dtype)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(np.asarray(ours, np.float64), np.asarray(theirs, np.float64))


# Each case compiles JAX's own draw at its shape (1-3 s), so the dtypes and key kinds are
# checked on fewer cases than the shapes.
@pytest.mark.parametrize("case", INITIALIZER_CASES, ids=str)
def test_chunked_initializers_draw_exactly_jaxs_values(case):
    assert_draws_jaxs_values(case, jnp.float32, jax.random.key(3))


@pytest.mark.parametrize("case", [INITIALIZER_CASES[i] for i in (2, 4, 6)], ids=str)
def test_chunked_initializers_draw_exactly_jaxs_bfloat16_values(case):
    assert_draws_jaxs_values(case, jnp.bfloat16, jax.random.key(3))


@pytest.mark.parametrize("key", INITIALIZER_KEYS, ids=str)
def test_chunked_initializers_take_any_kind_of_key(key):
    assert_draws_jaxs_values(INITIALIZER_CASES[-2], jnp.float32, INITIALIZER_KEYS[key]())


@pytest.mark.parametrize("case", [INITIALIZER_CASES[i] for i in (2, 6)], ids=str)
def test_chunked_initializers_draw_jaxs_float64_values_in_x64_mode(case):
    with jax.enable_x64(True):
        assert_draws_jaxs_values(case, jnp.float64, jax.random.key(3))


def test_chunked_initializers_place_their_values_where_jaxs_are():
    draw = zoo.ops.initializers.lecun_normal()
    for key in (jax.random.key(0), jax.device_put(jax.random.key(0), jax.devices()[-1])):
        ours, theirs = draw(key, (64, 64)), jax.nn.initializers.lecun_normal()(key, (64, 64))
        assert (ours.committed, ours.sharding) == (theirs.committed, theirs.sharding)


def test_initializers_under_jit_draw_jaxs_values():
    shape, *arguments = INITIALIZER_CASES[-2]
    ours = jax.jit(lambda k: zoo.ops.initializers.variance_scaling(*arguments)(k, shape))
    theirs = jax.jit(lambda k: jax.nn.initializers.variance_scaling(*arguments)(k, shape))
    np.testing.assert_array_equal(ours(jax.random.key(2)), theirs(jax.random.key(2)))


def test_chunked_initializers_compile_once_for_every_size():
    draw = zoo.ops.initializers.lecun_normal()
    draw(jax.random.key(0), (64, 64))  # compiled here, or by an earlier test
    compiled = zoo.ops.initializers._chunk._cache_size()
    for shape in [(3, 3, 64, 128), (3, 3, 128, 128), (1, 1, 256, 512), (2048, 1000)]:
        draw(jax.random.key(1), shape)
    assert zoo.ops.initializers._chunk._cache_size() == compiled


@pytest.mark.parametrize(
    "ours, theirs, settings, x",
    [
        (zoo.ops.Conv, nn.Conv, dict(features=8, kernel_size=(3, 3)), jnp.ones((2, 9, 9, 3))),
        (zoo.ops.Conv, nn.Conv, dict(features=64, kernel_size=(3, 3)), jnp.ones((1, 5, 5, 64))),
        (zoo.ops.Dense, nn.Dense, dict(features=10), jnp.ones((2, 30))),
        (zoo.ops.Dense, nn.Dense, dict(features=1000), jnp.ones((2, 512))),
    ],
    ids=["conv-small", "conv-chunked", "dense-small", "dense-chunked"],
)
def test_the_zoo_layers_start_from_flaxs_values(ours, theirs, settings, x):
    key = jax.random.key(0)
    chex.assert_trees_all_equal(ours(**settings).init(key, x), theirs(**settings).init(key, x))


@pytest.mark.parametrize("portable", [False, True], ids=["as_traced", "portable"])
@pytest.mark.parametrize(("cin", "cout", "size"), [(1, 6, 32), (6, 16, 14), (16, 120, 5)])
def test_few_channel_conv_equals_flax_conv(cin, cout, size, portable):
    # LeNet's convolutions: oneDNN's where it runs all of them, else on CPU one banded matmul.
    x = jax.random.normal(jax.random.key(0), (3, size, size + 2, cin))
    reference = nn.Conv(cout, (5, 5), padding="VALID")
    variables = reference.init(jax.random.key(1), x)
    fast = zoo.ops.Conv(cout, (5, 5), padding="VALID")
    # The same parameters from the same key: checkpoints are interchangeable.
    chex.assert_trees_all_equal(fast.init(jax.random.key(1), x), variables)

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    with zoo.ops.portable() if portable else contextlib.nullcontext():
        # oneDNN's convolution where it runs this one, else (portable) the banded matmul.
        hlo = jax.jit(fast.apply).lower(variables, x).as_text()
        native = not portable and zoo.ops.native_available()
        assert ("zoo_onednn_conv_forward" in hlo) == native
        assert ("dot_general" in hlo) == (not native)
        chex.assert_trees_all_close(
            fast.apply(variables, x), reference.apply(variables, x), atol=1e-5, rtol=1e-5
        )
        chex.assert_trees_all_close(
            jax.grad(loss, argnums=(1, 2))(fast, variables, x),
            jax.grad(loss, argnums=(1, 2))(reference, variables, x),
            atol=1e-4,
            rtol=1e-4,
        )


def test_conv_adds_its_bias_in_float32():
    # In bf16 the bias gradient is then a float32 sum XLA:CPU fuses; the bf16 one it rewrote into
    # a slow reduce-window. The sum is rounded once, as oneDNN's and PyTorch's.
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 1)).astype(jnp.bfloat16)
    conv = zoo.ops.Conv(6, (5, 5), padding="VALID", dtype=jnp.bfloat16)
    variables = conv.init(jax.random.key(1), x)
    variables = {"params": {**variables["params"], "bias": jnp.full((6,), 1 / 3, jnp.float32)}}

    def loss(variables, x):
        return jnp.sum(conv.apply(variables, x).astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss)).lower(variables, x).compile().as_text()
    assert "reduce-window" not in compiled
    unbiased = {"params": {**variables["params"], "bias": jnp.zeros((6,), jnp.float32)}}
    y, y0 = conv.apply(variables, x), conv.apply(unbiased, x)
    want = (y0.astype(jnp.float32) + jnp.float32(1 / 3)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))

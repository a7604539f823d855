"""The zoo's convolution: the extension's kernels on CPU, XLA's convolution everywhere else.

`conv_general_dilated` takes `jax.lax.conv_general_dilated`'s arguments and computes the same
thing. A convolution the extension can take (NHWC x HWIO, float32 or bfloat16, no
`lhs_dilation`, no negative padding, no `batch_group_count`, no other `preferred_element_type`)
is one `Geometry`; each of its three directions (forward, backward data, backward weights) runs
the first kernel of that direction's table, `KERNELS`, whose rule holds for it, and XLA's
convolution where none does. The rules are asked at trace time, from the geometry, the dtype,
the CPU (which oneDNN kernel it has) and the caller's `precision`:

- Winograd, F(4x4, 3x3) in float32 (`csrc/winograd_conv.cc`) and F(2x2, 3x3) in bf16
  (`csrc/winograd_bf16_conv.cc`), for 3x3 stride-1 "SAME" convolutions: fewer multiplications,
  a larger rounding error (float32: ~5-10x a direct convolution's; bf16: ~2.5x, its tiles
  rounded to bf16). `precision=lax.Precision.HIGHEST` ("highest", "float32"), passed or set with
  `jax.default_matmul_precision`, keeps the direct kernels, as it keeps GPUs and TPUs off TF32
  and bf16 passes.
- The extension's bf16 3x3 weight gradient (`csrc/bf16_conv3x3_weights.cc`): the same float32
  sums of the same products as oneDNN's bf16 kernel, in another order, rounded once.
- oneDNN's direct kernels (`csrc/onednn_conv.cc`) where oneDNN has a real (JIT) one: float32
  in float32, bf16 with float32 accumulation on its bf16 kernels, or on its float32 kernels with
  the operands widened exactly and the result rounded once where the CPU has no bf16 kernels
  (and for the directions of a bf16 depthwise convolution whose bf16 kernel is a generic one).
- XLA, where a rule says XLA's kernel was measured faster, and where nothing else applies.

A new kernel, or a rule for a kind of convolution (grouped: `Geometry.groups`; depthwise: also
`Geometry.in_per_group == 1`), is one row of `KERNELS`. On CPU the directions are
differentiable to any order in both modes (`zoo.ops.autodiff`; every derivative of a
convolution is a sum of its three directions), and under a batch-sharded `jax.jit` each device
runs its own shard (`zoo.ops.sharding`).

Where the extension runs none of it on CPU, a few-channel "VALID" stride-1 convolution runs
as one banded matrix product (`banded_conv`), which XLA:CPU runs faster than its convolution.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops import backend, native, sharding

NHWC_HWIO = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = (
    native.FORWARD,
    native.BACKWARD_DATA,
    native.BACKWARD_WEIGHTS,
)
DIRECTIONS = (FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS)
_F32, _BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One NHWC x HWIO convolution: what every kernel rule reads."""

    lhs_shape: tuple[int, int, int, int]  # N, H, W, C
    rhs_shape: tuple[int, int, int, int]  # KH, KW, C / groups, K
    dtype: Any
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.rhs_shape[0], self.rhs_shape[1]

    @property
    def in_channels(self) -> int:
        return self.lhs_shape[3]

    @property
    def out_channels(self) -> int:
        return self.rhs_shape[3]

    @property
    def in_per_group(self) -> int:
        return self.rhs_shape[2]

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @functools.cached_property
    def out_shape(self) -> tuple[int, int, int, int]:
        sizes = []
        for size, kernel, stride, (low, high), dilation in zip(
            self.lhs_shape[1:3],
            self.kernel_size,
            self.strides,
            self.padding,
            self.dilation,
            strict=True,
        ):
            span = (kernel - 1) * dilation + 1
            sizes.append(max(0, (size + low + high - span) // stride + 1))
        return (self.lhs_shape[0], *sizes, self.out_channels)

    @property
    def macs(self) -> int:
        return math.prod(self.out_shape) * math.prod(self.rhs_shape[:3])

    def with_batch(self, batch: int) -> Geometry:
        return dataclasses.replace(self, lhs_shape=(batch, *self.lhs_shape[1:]))

    def shape_of(self, direction: int) -> tuple[int, ...]:
        """The shape of `direction`'s result: the output, the input's or the kernel's gradient."""
        return {FORWARD: self.out_shape, BACKWARD_DATA: self.lhs_shape}.get(
            direction, self.rhs_shape
        )

    def onednn_config(self, kernel_dtype: Any, threads: int) -> tuple[int, ...]:
        """`ConvConfig`'s fields in `csrc/onednn_conv.cc`."""
        return (
            *self.lhs_shape,
            *self.kernel_size,
            self.out_channels,
            *self.out_shape[1:3],
            *self.strides,
            *self.padding[0],
            *self.padding[1],
            *self.dilation,
            self.groups,
            native.PRECISIONS[jnp.dtype(kernel_dtype)],
            threads,
        )

    def xla(self, lhs: jax.Array, rhs: jax.Array, precision: Any = None) -> jax.Array:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            self.strides,
            self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=NHWC_HWIO,
            feature_group_count=self.groups,
            precision=precision,
        )


@dataclasses.dataclass(frozen=True)
class Conditions:
    """What a kernel rule may ask about a convolution: its geometry, the threads of its calls,
    whether its caller allows a less exact algorithm (`precision`), and oneDNN's kernels."""

    geometry: Geometry
    threads: int
    inexact_allowed: bool

    def onednn(self, direction: int, dtype: Any = None) -> str | None:
        """The name of oneDNN's JIT kernel for `direction` in `dtype` (default: the
        convolution's), or None where oneDNN has only its reference kernel or none."""
        dtype = self.geometry.dtype if dtype is None else dtype
        config = self.geometry.onednn_config(dtype, self.threads)
        found, name = native.implementation(native.CONV, direction, config)
        return name if found else None

    def onednn_everywhere(self) -> bool:
        """Whether oneDNN's direct kernels run every direction in the convolution's own dtype,
        none of them measured slower than XLA's."""
        return all(
            self.onednn(d) is not None and not _xla_measured_faster(self, d) for d in DIRECTIONS
        )


Run = Callable[["_Plan", int, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One row of a direction's table: where `applies(conditions, direction)`, the direction
    runs `run(plan, direction, a, b)`, or XLA's convolution where `run` is None; `dtype` is
    the dtype it computes in, where that is not the convolution's; an `inexact` kernel rounds
    more than a direct convolution and runs only where the caller's precision allows it."""

    name: str
    applies: Callable[[Conditions, int], bool]
    run: Run | None
    dtype: Any = None
    inexact: bool = False

    def computes_in(self, dtype: Any) -> Any:
        """The dtype this kernel computes a `dtype` convolution in; None for XLA."""
        return None if self.run is None else jnp.dtype(self.dtype or dtype)


# --- the kernels' calls ----------------------------------------------------------------------


def _onednn(
    plan: _Plan, direction: int, a: jax.Array, b: jax.Array, dtype: Any = None
) -> jax.Array:
    """oneDNN's direct kernel for `direction`, in `dtype` (default: the convolution's)."""
    g = plan.geometry
    dtype = g.dtype if dtype is None else dtype
    (top, bottom), (left, right) = g.padding
    result = backend.call(
        native.CONV_TARGETS[direction],
        jax.ShapeDtypeStruct(g.shape_of(direction), dtype),
        a.astype(dtype),
        b.astype(dtype),
        window_strides=g.strides,
        padding=(top, bottom, left, right),
        rhs_dilation=g.dilation,
        feature_group_count=g.groups,
        num_threads=plan.threads,
    )
    return result.astype(g.dtype)


def _winograd(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """Winograd's forward convolution of `a` with the kernel `b`, or its input gradient: the
    forward convolution of the output's gradient `a` with `b` turned by 180 degrees and its
    channels swapped (what a 3x3 stride-1 convolution padded by one transposes into)."""
    g = plan.geometry
    kernel = b if direction == FORWARD else jnp.flip(b, (0, 1)).swapaxes(2, 3)
    target = native.WINOGRAD_BF16_TARGET if g.dtype == _BF16 else native.WINOGRAD_TARGET
    result = jax.ShapeDtypeStruct((*a.shape[:3], kernel.shape[3]), g.dtype)
    return backend.call(target, result, a, kernel, num_threads=plan.threads)


def _winograd_weights(plan: _Plan, direction: int, lhs: jax.Array, d_out: jax.Array) -> jax.Array:
    g = plan.geometry
    result = jax.ShapeDtypeStruct(g.rhs_shape, g.dtype)
    return backend.call(
        native.WINOGRAD_WEIGHTS_TARGET, result, lhs, d_out, num_threads=plan.threads
    )


def _bf16_weights(plan: _Plan, direction: int, lhs: jax.Array, d_out: jax.Array) -> jax.Array:
    g = plan.geometry
    return backend.call(
        native.BF16_WEIGHTS_TARGET,
        jax.ShapeDtypeStruct(g.rhs_shape, _BF16),
        lhs,
        d_out,
        stride=g.strides[0],
        num_threads=plan.threads,
    )


# --- the rules -------------------------------------------------------------------------------

# Winograd runs where at least this share of its output tiles lies inside the image (7x7 maps:
# 77%; 13x13: 66% was measured a tie): bench/README.md, "Winograd".
WINOGRAD_TILE_USE = 0.75
# Channels it was measured up to; the transformed kernel it writes every call grows with them.
WINOGRAD_CHANNELS = 512
# Channels from which its float32 weight gradient (sums of C x K products over the tiles) and its
# bf16 forward and input gradient beat oneDNN's direct kernels (bench/README.md, "Winograd").
WINOGRAD_WEIGHT_GRADIENT_CHANNELS = 64
WINOGRAD_BF16_CHANNELS = 64
# The only oneDNN bf16 forward kernel bf16 Winograd was measured against (not AMX's).
WINOGRAD_BF16_REPLACES = ":avx512_core_bf16"
# The extension's bf16 weight gradient beats oneDNN's AVX512-BF16 kernel from this many output
# channels, and was measured against that kernel only (bench/README.md, "bf16 weight gradient").
BF16_WEIGHT_GRADIENT_CHANNELS = 32
BF16_WEIGHT_GRADIENT_REPLACES = "jit_bf16:avx512_core_bf16"
# Per oneDNN float32 weight-gradient kernel, the channels per group from which XLA's was
# measured faster in a train step (bench/README.md, "XLA's weight gradient").
XLA_WEIGHT_GRADIENT_FROM = {"jit:avx2": 128}


def _winograd_shape(g: Geometry, tile: int) -> bool:
    """A 3x3 stride-1 convolution padded by one, no groups, 16 to `WINOGRAD_CHANNELS` channels
    in multiples of 16, on images that fill enough of Winograd's `tile` x `tile` output tiles."""

    def tile_use(size: int) -> float:
        return size / (tile * -(-size // tile))

    _, height, width, _ = g.lhs_shape
    return (
        g.kernel_size == (3, 3)
        and g.strides == (1, 1)
        and g.dilation == (1, 1)
        and g.padding == ((1, 1), (1, 1))
        and g.groups == 1
        and g.in_channels % 16 == 0
        and g.out_channels % 16 == 0
        and max(g.in_channels, g.out_channels) <= WINOGRAD_CHANNELS
        and tile_use(height) * tile_use(width) >= WINOGRAD_TILE_USE
    )


def _winograd_float32(c: Conditions, direction: int) -> bool:
    return (
        c.geometry.dtype == _F32
        and _winograd_shape(c.geometry, 4)
        and native.winograd_available()
        and c.onednn_everywhere()
    )


def _winograd_float32_weights(c: Conditions, direction: int) -> bool:
    g = c.geometry
    wide = min(g.in_channels, g.out_channels) >= WINOGRAD_WEIGHT_GRADIENT_CHANNELS
    return wide and _winograd_float32(c, direction)


def _winograd_bf16(c: Conditions, direction: int) -> bool:
    g = c.geometry
    return (
        g.dtype == _BF16
        and _winograd_shape(g, 2)
        and min(g.in_channels, g.out_channels) >= WINOGRAD_BF16_CHANNELS
        and (c.onednn(FORWARD) or "").endswith(WINOGRAD_BF16_REPLACES)
        and native.winograd_bf16_available()
        and c.onednn_everywhere()
    )


def _bf16_weight_gradient(c: Conditions, direction: int) -> bool:
    """A bf16 3x3 convolution at stride 1 or 2 padded by one, no groups, channels in multiples
    of 16, at least `BF16_WEIGHT_GRADIENT_CHANNELS` out, where oneDNN's kernel is the one the
    extension's was measured against."""
    g = c.geometry
    return (
        g.dtype == _BF16
        and g.kernel_size == (3, 3)
        and g.strides in ((1, 1), (2, 2))
        and g.dilation == (1, 1)
        and g.padding == ((1, 1), (1, 1))
        and g.groups == 1
        and g.in_channels % 16 == 0
        and g.out_channels % 16 == 0
        and g.out_channels >= BF16_WEIGHT_GRADIENT_CHANNELS
        and c.onednn(BACKWARD_WEIGHTS) == BF16_WEIGHT_GRADIENT_REPLACES
        and native.bf16_weights_available()
    )


def _xla_measured_faster(c: Conditions, direction: int) -> bool:
    """A float32 weight gradient whose oneDNN kernel lost to XLA's from
    `XLA_WEIGHT_GRADIENT_FROM` channels per group, in and out, of an ungrouped convolution.

    A grouped convolution keeps oneDNN's kernels in every direction: XLA:CPU runs its weight
    gradient as one convolution with `batch_group_count` groups, which lost to oneDNN's by
    orders of magnitude on ResNeXt's 3x3s (bench/README.md, "Grouped convolutions").
    """
    if direction != BACKWARD_WEIGHTS or c.geometry.dtype != _F32 or c.geometry.groups > 1:
        return False
    channels = XLA_WEIGHT_GRADIENT_FROM.get(c.onednn(direction) or "")
    g = c.geometry
    return channels is not None and min(g.in_per_group, g.out_per_group) >= channels


# Depthwise convolutions (one filter per channel: MobileNets, EfficientNets) keep oneDNN's
# kernels in every direction: XLA's grouped convolution was many times slower at every depthwise
# layer measured (bench/README.md, "The mobile networks"). For two bf16 directions oneDNN 3.2
# picks one of these generic bf16 kernels instead of a depthwise one (5x5 weight gradients, input
# gradients at stride 2); its float32 depthwise kernel on the widened operands was faster there.
# Not measured against AMX's kernels: those keep oneDNN's bf16 ones.
BF16_DEPTHWISE_WIDENS = ("jit_bf16:avx512_core_bf16", "brgconv_strided:avx512_core_bf16")


def _bf16_depthwise_widened(c: Conditions, direction: int) -> bool:
    """A direction of a bf16 depthwise convolution (groups = input = output channels) whose
    oneDNN bf16 kernel is one of `BF16_DEPTHWISE_WIDENS`, where its float32 kernel applies
    (`_onednn_widened`): the same float32 sums of the exactly widened operands, rounded once."""
    g = c.geometry
    return (
        g.dtype == _BF16
        and 1 < g.groups == g.in_channels == g.out_channels
        and c.onednn(direction) in BF16_DEPTHWISE_WIDENS
        and _onednn_widened(c, direction)
    )


def _onednn_own(c: Conditions, direction: int) -> bool:
    return c.onednn(direction) is not None


def _onednn_widened(c: Conditions, direction: int) -> bool:
    """A bf16 convolution on a CPU without oneDNN bf16 kernels: float32's, on the exactly
    widened operands, the result rounded once (bf16 with float32 accumulation)."""
    return c.geometry.dtype != _F32 and c.onednn(direction, _F32) is not None


WINOGRAD_FLOAT32 = Kernel("winograd float32", _winograd_float32, _winograd, inexact=True)
WINOGRAD_FLOAT32_WEIGHTS = Kernel(
    "winograd float32 weights", _winograd_float32_weights, _winograd_weights, inexact=True
)
WINOGRAD_BF16 = Kernel("winograd bf16", _winograd_bf16, _winograd, inexact=True)
BF16_WEIGHTS = Kernel("bf16 3x3 weights", _bf16_weight_gradient, _bf16_weights)
XLA_MEASURED_FASTER = Kernel("xla, measured faster", _xla_measured_faster, None)
BF16_DEPTHWISE_WIDENED = Kernel(
    "onednn float32, bf16 depthwise",
    _bf16_depthwise_widened,
    functools.partial(_onednn, dtype=_F32),
    _F32,
)
ONEDNN = Kernel("onednn", _onednn_own, _onednn)
ONEDNN_WIDENED = Kernel(
    "onednn float32", _onednn_widened, functools.partial(_onednn, dtype=_F32), _F32
)

# Per direction, the kernels in order of preference; XLA where none applies.
KERNELS: dict[int, tuple[Kernel, ...]] = {
    FORWARD: (WINOGRAD_FLOAT32, WINOGRAD_BF16, BF16_DEPTHWISE_WIDENED, ONEDNN, ONEDNN_WIDENED),
    BACKWARD_DATA: (
        WINOGRAD_FLOAT32,
        WINOGRAD_BF16,
        BF16_DEPTHWISE_WIDENED,
        ONEDNN,
        ONEDNN_WIDENED,
    ),
    BACKWARD_WEIGHTS: (
        XLA_MEASURED_FASTER,
        WINOGRAD_FLOAT32_WEIGHTS,
        BF16_WEIGHTS,
        BF16_DEPTHWISE_WIDENED,
        ONEDNN,
        ONEDNN_WIDENED,
    ),
}


def _chosen(conditions: Conditions, direction: int) -> Kernel | None:
    """The first kernel of `direction`'s table that applies; None for XLA."""
    for kernel in KERNELS[direction]:
        allowed = conditions.inexact_allowed or not kernel.inexact
        if allowed and kernel.applies(conditions, direction):
            return kernel if kernel.run is not None else None
    return None


# --- the plan --------------------------------------------------------------------------------

# Below this many multiply-adds a call runs on one thread (`backend.call_team`), by the dtype
# its kernel computes in (bench/README.md, "Threads per call").
ONE_THREAD_BELOW_MACS = {_F32: 24e6, _BF16: 48e6}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A convolution with the kernel of each of its directions (None: XLA's)."""

    geometry: Geometry
    precision: Any  # XLA's, for the directions it runs
    threads: int
    kernels: tuple[Kernel | None, Kernel | None, Kernel | None]

    @property
    def dtypes(self) -> tuple[Any, Any, Any]:
        """Per direction, the dtype its kernel computes in; None where XLA runs it."""
        return tuple(
            None if k is None else k.computes_in(self.geometry.dtype) for k in self.kernels
        )

    def xla(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return self.geometry.xla(lhs, rhs, self.precision)

    def for_batch(self, batch: int) -> _Plan | None:
        """This convolution on `batch` images (one device's shard), its kernels chosen anew;
        an inexact one only where the whole batch's plan has one."""
        if batch == self.geometry.lhs_shape[0]:
            return self
        inexact = any(kernel is not None and kernel.inexact for kernel in self.kernels)
        return planned(self.geometry.with_batch(batch), self.precision, inexact)


def planned(
    geometry: Geometry, precision: Any = None, inexact_allowed: bool | None = None
) -> _Plan | None:
    """The kernels of `geometry`'s directions on this CPU (see the module docstring), or None
    where XLA runs all three. `inexact_allowed`: an inexact kernel (Winograd) may run; by
    default where the caller did not ask for float32 throughout (`_asks_for_float32`)."""
    if not backend.native_applies() or geometry.dtype not in native.PRECISIONS:
        return None
    if inexact_allowed is None:
        inexact_allowed = not _asks_for_float32(precision)
    precision = tuple(precision) if isinstance(precision, list) else precision  # a cache key
    return _planned_for_team(geometry, precision, inexact_allowed, backend.team_size())


# A train step plans again every convolution its `init` planned, and a plan is a function of
# these arguments alone.
@functools.lru_cache(maxsize=4096)
def _planned_for_team(
    geometry: Geometry, precision: Any, inexact_allowed: bool, team: int
) -> _Plan | None:
    if 0 in geometry.out_shape:
        return None

    def kernels_on(threads: int) -> tuple[Kernel | None, ...]:
        conditions = Conditions(geometry, threads, inexact_allowed)
        return tuple(_chosen(conditions, d) for d in DIRECTIONS)

    def threads_for(dtype: Any) -> int:
        return backend.call_team(team, geometry.macs, ONE_THREAD_BELOW_MACS[jnp.dtype(dtype)])

    threads, chosen = backend.threads_for_kernels(
        geometry.dtype, threads_for, kernels_on, lambda kernel: kernel.computes_in(geometry.dtype)
    )
    if all(kernel is None for kernel in chosen):
        return None
    return _Plan(geometry, precision, threads, tuple(chosen))


clear_plans = _planned_for_team.cache_clear  # after changing what `native` reports


def _asks_for_float32(precision: Any) -> bool:
    """Whether a convolution's caller asked for float32 arithmetic throughout: `precision` is
    `lax.Precision.HIGHEST` ("highest", "float32"), for either operand, or it is None and
    `jax.default_matmul_precision` is. As on GPUs and TPUs, whose default float32 convolutions
    round to TF32 or bf16, the default allows a less exact algorithm (Winograd)."""
    requested = jax.config.jax_default_matmul_precision if precision is None else precision
    values = requested if isinstance(requested, (tuple, list)) else (requested,)
    return any(_is_highest(value) for value in values if value is not None)


def _is_highest(value: Any) -> bool:
    try:
        return lax.Precision(value) == lax.Precision.HIGHEST
    except (ValueError, TypeError):  # a dot algorithm's name: not a precision level
        return False


# --- running it ------------------------------------------------------------------------------

# Per direction: which operands carry the batch, and whether the result sums over it.
_BATCHED = {
    FORWARD: sharding.split(batched=(True, False), summed=False),  # (lhs, rhs) -> out
    BACKWARD_DATA: sharding.split(batched=(True, False), summed=False),  # (d_out, rhs) -> d_lhs
    BACKWARD_WEIGHTS: sharding.split(batched=(True, True), summed=True),  # (lhs, d_out) -> d_rhs
}


def _xla_direction(
    geometry: Geometry, precision: Any, direction: int, a: jax.Array, b: jax.Array
) -> jax.Array:
    """`direction` of the convolution on XLA; the linear maps' transposes for gradients."""
    conv = functools.partial(geometry.xla, precision=precision)
    if direction == FORWARD:
        return conv(a, b)
    if direction == BACKWARD_DATA:
        lhs = jax.ShapeDtypeStruct(geometry.lhs_shape, geometry.dtype)
        return jax.linear_transpose(lambda x: conv(x, b), lhs)(a)[0]
    rhs = jax.ShapeDtypeStruct(geometry.rhs_shape, geometry.dtype)
    return jax.linear_transpose(lambda w: conv(a, w), rhs)(b)[0]


def _on_shard(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """`direction` on the batch `a` holds (the whole batch, or one device's shard of it)."""
    local = plan.for_batch(a.shape[0])
    if local is None or local.kernels[direction] is None:
        geometry = plan.geometry.with_batch(a.shape[0])
        return _xla_direction(geometry, plan.precision, direction, a, b)
    return local.kernels[direction].run(local, direction, a, b)


def _direction(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """One direction of the convolution on CPU: its kernel, per batch shard, or XLA's."""
    if plan.kernels[direction] is None:
        return _xla_direction(plan.geometry, plan.precision, direction, a, b)
    return _BATCHED[direction](functools.partial(_on_shard, plan, direction), a, b)


def _native_conv(lhs: jax.Array, rhs: jax.Array, plan: _Plan) -> jax.Array:
    """The convolution on `plan`'s kernels: a bilinear map, so every derivative of it is a sum
    of its three directions (`zoo.ops.autodiff`)."""

    def forward(lhs, rhs):
        return (_direction(plan, FORWARD, lhs, rhs),), ()

    def cotangent(primals, residuals, cotangents):
        (lhs, rhs), (d_out,) = primals, cotangents
        d_lhs = _direction(plan, BACKWARD_DATA, d_out, rhs)
        d_rhs = _direction(plan, BACKWARD_WEIGHTS, lhs, d_out)
        return sharding.cotangent_like(d_lhs, lhs), sharding.cotangent_like(d_rhs, rhs)

    conv = backend.native_op(
        "conv_general_dilated",
        lambda lhs, rhs: (plan.xla(lhs, rhs),),
        forward,
        cotangent,
        bilinear=True,
    )
    return conv(lhs, rhs)[0]


# The banded product's matrix may have at most this many entries, and its input this many
# channels: LeNet-5's convolutions (bench/README.md, "Banded matmul").
BANDED_MAX_ENTRIES = 2**20
BANDED_MAX_CHANNELS = 16


def _runs_banded(g: Geometry) -> bool:
    """A few-channel "VALID" stride-1 convolution without dilation or groups, whose banded
    matrix is small."""
    _, _, width, _ = g.lhs_shape
    kernel_h, _ = g.kernel_size
    entries = kernel_h * width * g.in_channels * g.out_shape[2] * g.out_channels
    return (
        g.padding == ((0, 0), (0, 0))
        and g.strides == (1, 1)
        and g.dilation == (1, 1)
        and g.groups == 1
        and g.in_channels <= BANDED_MAX_CHANNELS
        and 0 < entries <= BANDED_MAX_ENTRIES
    )


def banded_conv(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
    """A "VALID", stride-1 convolution of NHWC `x` with an HWIO `kernel`, as one matmul: the
    `kh` kernel-row-shifted image rows, concatenated, times a banded (Toeplitz) matrix built
    from the kernel, (N*Ho, kh*W*Cin) @ (kh*W*Cin, Wo*Cout). The band multiplies zeros (W / kw
    times the useful work), but for few channels XLA:CPU runs a matmul of that shape faster
    than its convolution, and its gradients are matmuls too."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    out_h, out_w = h - kh + 1, w - kw + 1
    # band[j, a, b] = 1 where input column a = output column b + j.
    band = np.zeros((kw, w, out_w), np.float32)
    for j in range(kw):
        band[j, np.arange(out_w) + j, np.arange(out_w)] = 1.0
    # toeplitz[i, a, c, b, d] = kernel[i, a - b, c, d] (zero off the band).
    toeplitz = jnp.einsum("jab,ijcd->iacbd", jnp.asarray(band, kernel.dtype), kernel)
    toeplitz = toeplitz.reshape(kh * w * cin, out_w * cout)
    rows = x.reshape(n, h, w * cin)
    shifted = jnp.concatenate([rows[:, i : i + out_h] for i in range(kh)], axis=-1)
    y = jnp.matmul(shifted.reshape(n * out_h, kh * w * cin), toeplitz, precision=precision)
    return y.reshape(n, out_h, out_w, cout)


# --- the public op ---------------------------------------------------------------------------


def _geometry(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    preferred_element_type,
) -> Geometry | None:
    """The call as a `Geometry`, or None where it is no convolution the zoo's kernels take."""
    if jnp.ndim(lhs) != 4 or jnp.ndim(rhs) != 4:
        return None
    dtype = jnp.result_type(lhs)
    if dtype != jnp.result_type(rhs) or not jnp.issubdtype(dtype, jnp.floating):
        return None
    if batch_group_count != 1:
        return None
    if preferred_element_type is not None and jnp.dtype(preferred_element_type) != dtype:
        return None
    if lhs_dilation is not None and tuple(lhs_dilation) != (1, 1):
        return None
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != NHWC_HWIO:
        return None
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation, strict=True)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
    padding = tuple((int(low), int(high)) for low, high in padding)
    if any(p < 0 for pair in padding for p in pair) or 0 in lhs.shape or 0 in rhs.shape:
        return None
    return Geometry(
        tuple(lhs.shape),
        tuple(rhs.shape),
        jnp.dtype(dtype),
        tuple(window_strides),
        padding,
        rhs_dilation,
        feature_group_count,
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated`, on the extension's kernels where the computation runs on
    a CPU that has them for this configuration (see the module docstring), on XLA otherwise."""
    arguments = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        preferred_element_type=preferred_element_type,
    )
    geometry = _geometry(lhs, rhs, **arguments)
    if geometry is None:
        return lax.conv_general_dilated(lhs, rhs, precision=precision, **arguments)
    plan = planned(geometry, precision)
    if plan is not None and (None in plan.kernels) and _runs_banded(geometry):
        plan = None  # on CPU all of it as a banded matmul, rather than some of it on XLA
    if plan is not None:
        return _native_conv(lhs, rhs, plan)
    if _runs_banded(geometry):
        return backend.on_cpu(
            functools.partial(banded_conv, precision=precision),
            functools.partial(geometry.xla, precision=precision),
            lhs,
            rhs,
        )
    return lax.conv_general_dilated(lhs, rhs, precision=precision, **arguments)


def runs_on_onednn(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
) -> bool:
    """Whether `conv_general_dilated` with these arguments runs on the extension's kernels in
    all three directions where it runs on CPU; asked at trace time, from shapes and dtypes."""
    geometry = _geometry(
        lhs,
        rhs,
        window_strides,
        padding,
        None,
        None,
        dimension_numbers,
        feature_group_count,
        1,
        None,
    )
    plan = None if geometry is None else planned(geometry)
    return plan is not None and None not in plan.kernels

"""The zoo's convolution: oneDNN kernels on CPU, XLA's convolution everywhere else.

`conv_general_dilated` takes `jax.lax.conv_general_dilated`'s arguments and computes the same
thing. Inside one jitted function, `jax.lax.platform_dependent` picks per backend: on CPU the
oneDNN kernels of `csrc/onednn_conv.cc` (forward, backward-data and backward-weights FFI calls,
differentiable to any order in both modes: `zoo.ops.autodiff`), on GPU and TPU
`lax.conv_general_dilated`. Each of the three directions runs on oneDNN only where oneDNN has a
real (JIT) kernel for it on this CPU, asked at trace time, and XLA's was not measured faster
(`XLA_WEIGHT_GRADIENT_FROM`); anything else stays on XLA: layouts other than NHWC/HWIO,
`lhs_dilation` (transposed convolutions), negative padding, mixed dtypes,
`preferred_element_type`, `batch_group_count`. oneDNN computes float32 in float32 and bf16
with float32 accumulation, on its bf16 kernels where the CPU has them (AVX512-BF16, AMX), else
on its float32 kernels with the bf16 operands widened exactly and the result rounded once to bf16
(also the directions of a depthwise convolution for which its bf16 kernel is a generic one:
`_widens_bf16_depthwise`).

`precision` is XLA's and chooses the algorithm of 3x3 convolutions, as it chooses TF32 or bf16
passes on GPUs and TPUs: by default float32 ones run Winograd F(4x4, 3x3) (`csrc/winograd_conv.cc`:
fewer multiplications than oneDNN's direct kernels, a rounding error ~5-10x theirs) and bf16
ones F(2x2, 3x3) with bf16 transformed tiles (`csrc/winograd_bf16_conv.cc`: a rounding error
~2.5x a direct bf16 convolution's); which directions of which convolutions:
`_winograd_directions`. `lax.Precision.HIGHEST` ("highest", "float32"), passed or set with
`jax.default_matmul_precision`, keeps them on the direct kernels.
The weight gradient of bf16 3x3 convolutions runs the extension's own AVX512-BF16 kernel where
`_runs_bf16_weight_gradient` says (`csrc/bf16_conv3x3_weights.cc`): the same float32 sums of the
same products as oneDNN's bf16 kernel, in another order, rounded once; no precision is lost.

`Conv` is `flax.linen.Conv` with this op: the same parameters under the same names and the same
initial values (`zoo.ops.initializers`), so checkpoints move between the two unchanged.

Under a batch-sharded `jax.jit` each device runs oneDNN on its own shard (`zoo.ops.sharding`);
where oneDNN is kept out altogether (`portable()`, `ZOO_NATIVE=0`): `zoo.ops.backend`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops import autodiff, backend, initializers, native, sharding

NHWC_HWIO = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)
DIRECTIONS = tuple(native.CONV_TARGETS)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A convolution the extension can run, with which of its three directions it runs."""

    lhs_shape: tuple[int, ...]  # NHWC
    rhs_shape: tuple[int, ...]  # HWIO
    dtype: Any
    window_strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    rhs_dilation: tuple[int, int]
    feature_group_count: int
    precision: Any  # for XLA's path
    num_threads: int
    out_shape: tuple[int, ...]  # the forward result's, NHWC
    # Per direction (forward, backward data, backward weights): the dtype oneDNN computes it
    # in, None where XLA does.
    kernels: tuple[Any, Any, Any]
    # Per direction: whether it runs Winograd (F(4x4, 3x3) in float32, F(2x2, 3x3) in bf16)
    # instead of oneDNN's direct kernel (`_winograd_directions`).
    winograd: tuple[bool, bool, bool]
    # Whether its bf16 weight gradient runs `csrc/bf16_conv3x3_weights.cc` instead of oneDNN's
    # kernel (`_runs_bf16_weight_gradient`).
    bf16_weight_gradient: bool

    def xla(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            self.window_strides,
            self.padding,
            rhs_dilation=self.rhs_dilation,
            dimension_numbers=NHWC_HWIO,
            feature_group_count=self.feature_group_count,
            precision=self.precision,
        )

    def for_batch(self, batch: int) -> _Plan:
        """This convolution on `batch` images (one device's shard), its kernels chosen anew."""
        if batch == self.lhs_shape[0]:
            return self
        return _planned(
            (batch, *self.lhs_shape[1:]),
            self.rhs_shape,
            self.dtype,
            self.window_strides,
            self.padding,
            self.rhs_dilation,
            self.feature_group_count,
            self.precision,
            any(self.winograd),
        )

    def ffi(self, direction: int, *operands: jax.Array) -> jax.Array:
        """`direction` on the extension, in its kernel's dtype; the result in the convolution's."""
        if self.winograd[direction]:
            return self._winograd(direction, *operands)
        if direction == native.BACKWARD_WEIGHTS and self.bf16_weight_gradient:
            return self._bf16_weight_gradient(*operands)
        (top, bottom), (left, right) = self.padding
        dtype = self.kernels[direction]
        shape = {
            native.FORWARD: self.out_shape,
            native.BACKWARD_DATA: self.lhs_shape,
            native.BACKWARD_WEIGHTS: self.rhs_shape,
        }[direction]
        call = jax.ffi.ffi_call(
            native.CONV_TARGETS[direction],
            jax.ShapeDtypeStruct(shape, dtype),
            vmap_method="sequential",
        )
        result = call(
            *(operand.astype(dtype) for operand in operands),
            window_strides=np.array(self.window_strides, np.int64),
            padding=np.array([top, bottom, left, right], np.int64),
            rhs_dilation=np.array(self.rhs_dilation, np.int64),
            feature_group_count=np.int64(self.feature_group_count),
            num_threads=np.int64(self.num_threads),
        )
        return sharding.vary_like(result.astype(self.dtype), *operands)

    def _winograd(self, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
        """`direction` on the Winograd kernels. Backward data is the forward convolution of the
        output's gradient `a` with the kernel `b` turned by 180 degrees, its channels swapped
        (what a 3x3 stride-1 convolution padded by one transposes into)."""
        if direction == native.BACKWARD_WEIGHTS:
            target, result = native.WINOGRAD_WEIGHTS_TARGET, self.rhs_shape
            operands = (a, b)
        else:
            kernel = b if direction == native.FORWARD else jnp.flip(b, (0, 1)).swapaxes(2, 3)
            target = (
                native.WINOGRAD_BF16_TARGET
                if self.dtype == jnp.bfloat16
                else native.WINOGRAD_TARGET
            )
            result = (*a.shape[:3], kernel.shape[3])
            operands = (a, kernel)
        call = jax.ffi.ffi_call(
            target, jax.ShapeDtypeStruct(result, self.dtype), vmap_method="sequential"
        )
        return sharding.vary_like(call(*operands, num_threads=np.int64(self.num_threads)), a, b)

    def _bf16_weight_gradient(self, lhs: jax.Array, d_out: jax.Array) -> jax.Array:
        call = jax.ffi.ffi_call(
            native.BF16_WEIGHTS_TARGET,
            jax.ShapeDtypeStruct(self.rhs_shape, jnp.bfloat16),
            vmap_method="sequential",
        )
        result = call(
            lhs,
            d_out,
            stride=np.int64(self.window_strides[0]),
            num_threads=np.int64(self.num_threads),
        )
        return sharding.vary_like(result, lhs, d_out)


def _plan(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
) -> _Plan | None:
    """The oneDNN plan of a call, or None where it must run on XLA in every direction."""
    if not backend.native_applies():
        return None
    if jnp.ndim(lhs) != 4 or jnp.ndim(rhs) != 4:
        return None
    dtype = jnp.result_type(lhs)
    if dtype != jnp.result_type(rhs) or dtype not in native.PRECISIONS or batch_group_count != 1:
        return None
    if preferred_element_type is not None and jnp.dtype(preferred_element_type) != dtype:
        return None
    if lhs_dilation is not None and tuple(lhs_dilation) != (1, 1):
        return None
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != NHWC_HWIO:
        return None
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(
            lhs.shape[1:3], _dilated(rhs.shape[:2], rhs_dilation), window_strides, padding
        )
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if any(p < 0 for pair in padding for p in pair) or 0 in lhs.shape or 0 in rhs.shape:
        return None
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    plan = _planned(
        lhs.shape,
        rhs.shape,
        dtype,
        tuple(window_strides),
        padding,
        rhs_dilation,
        feature_group_count,
        precision,
    )
    if all(kernel is None for kernel in plan.kernels):
        return None
    return plan


def _planned(
    lhs_shape,
    rhs_shape,
    dtype,
    window_strides,
    padding,
    rhs_dilation,
    groups,
    precision,
    winograd_allowed: bool | None = None,
) -> _Plan:
    """The plan of a convolution of these shapes: oneDNN's kernel for each direction where it
    has one and XLA's was not measured faster (`_xla_is_faster`); none for an empty result;
    Winograd where `_winograd_directions` and `winograd_allowed` (by default, where the caller
    did not ask for float32 throughout: `_asks_for_float32`)."""
    if winograd_allowed is None:
        winograd_allowed = not _asks_for_float32(precision)
    return _planned_for_team(
        tuple(lhs_shape),
        tuple(rhs_shape),
        jnp.dtype(dtype),
        window_strides,
        padding,
        rhs_dilation,
        groups,
        tuple(precision) if isinstance(precision, list) else precision,  # a cache key
        backend.team_size(),
        winograd_allowed,
    )


# Below this many multiply-adds a call runs on one thread (`backend.call_team`), by the dtype its
# kernels compute in (`backend.threads_for_kernels`). Measured on an Intel Xeon with AMX
# (bench/README.md): ResNet-20 and LeNet-5 steps at batches 8-128 on one and on two threads;
# bf16's kernels are faster, so its calls stay short up to more work.
ONE_THREAD_BELOW_MACS = {jnp.dtype(jnp.float32): 24e6, jnp.dtype(jnp.bfloat16): 48e6}


# A train step plans again every convolution its `init` planned, and a plan is a function of
# these arguments alone (bench/README.md: the trace time it saves).
@functools.lru_cache(maxsize=4096)
def _planned_for_team(
    lhs_shape,
    rhs_shape,
    dtype,
    window_strides,
    padding,
    rhs_dilation,
    groups,
    precision,
    team,
    winograd_allowed,
) -> _Plan:
    out = jax.eval_shape(
        functools.partial(
            lax.conv_general_dilated,
            window_strides=window_strides,
            padding=padding,
            rhs_dilation=rhs_dilation,
            dimension_numbers=NHWC_HWIO,
            feature_group_count=groups,
        ),
        jax.ShapeDtypeStruct(lhs_shape, dtype),
        jax.ShapeDtypeStruct(rhs_shape, dtype),
    ).shape
    macs = math.prod(out) * math.prod(rhs_shape[:3])  # rhs_shape[2] is per group

    def onednn_kernel(direction: int, kernel_dtype: Any, threads: int) -> tuple[bool, str]:
        config = (
            *lhs_shape,
            *rhs_shape[:2],
            rhs_shape[3],
            *out[1:3],
            *window_strides,
            *padding[0],
            *padding[1],
            *rhs_dilation,
            groups,
            native.PRECISIONS[jnp.dtype(kernel_dtype)],
            threads,
        )
        return native.implementation(native.CONV, direction, config)

    def kernels_on(threads: int) -> tuple[Any, Any, Any]:
        def has_kernel(direction: int, kernel_dtype: Any) -> bool:
            found, name = onednn_kernel(direction, kernel_dtype, threads)
            measured = dtype == jnp.float32  # the convolution's own dtype, not the kernel's
            return (
                found
                and not (measured and _xla_is_faster(direction, name, rhs_shape, groups))
                and not _widens_bf16_depthwise(kernel_dtype, name, lhs_shape, rhs_shape, groups)
            )

        return tuple(
            None
            if 0 in out
            else native.kernel_dtype(dtype, functools.partial(has_kernel, direction))
            for direction in DIRECTIONS
        )

    threads, kernels = backend.threads_for_kernels(
        dtype,
        lambda kernel_dtype: backend.call_team(
            team, macs, ONE_THREAD_BELOW_MACS[jnp.dtype(kernel_dtype)]
        ),
        kernels_on,
    )
    return _Plan(
        lhs_shape,
        rhs_shape,
        dtype,
        window_strides,
        padding,
        rhs_dilation,
        groups,
        precision,
        threads,
        tuple(out),
        kernels,
        _winograd_directions(
            lhs_shape,
            rhs_shape,
            dtype,
            window_strides,
            padding,
            rhs_dilation,
            groups,
            onednn_kernel(native.FORWARD, dtype, threads)[1],
        )
        if winograd_allowed and all(k == dtype for k in kernels)
        else (False,) * len(DIRECTIONS),
        kernels[native.BACKWARD_WEIGHTS] == jnp.bfloat16 == dtype
        and _runs_bf16_weight_gradient(
            rhs_shape,
            window_strides,
            padding,
            rhs_dilation,
            groups,
            onednn_kernel(native.BACKWARD_WEIGHTS, dtype, threads)[1],
        ),
    )


def _asks_for_float32(precision: Any) -> bool:
    """Whether a convolution's caller asked for float32 arithmetic throughout: `precision` is
    `lax.Precision.HIGHEST` ("highest", "float32"), for either operand, or it is None and
    `jax.default_matmul_precision` is. As on GPUs and TPUs, whose default float32 convolutions
    round to TF32 or bf16, the default allows a less exact algorithm (`_winograd_directions`)."""
    requested = jax.config.jax_default_matmul_precision if precision is None else precision
    values = requested if isinstance(requested, (tuple, list)) else (requested,)
    return any(_is_highest(value) for value in values if value is not None)


def _is_highest(value: Any) -> bool:
    try:
        return lax.Precision(value) == lax.Precision.HIGHEST
    except (ValueError, TypeError):  # a dot algorithm's name: not a precision level
        return False


# Winograd F(4x4, 3x3) was measured faster than oneDNN 3.2's direct float32 kernels at the 3x3
# layers of ResNet-18 and ResNet-20 (bench/README.md, AMD Zen 5) where at least this share of
# its 4x4 output tiles lies inside the image (7x7: 77%); at 13x13 (66%) it was a tie. The same
# share of F(2x2, 3x3)'s tiles for bf16.
WINOGRAD_TILE_USE = 0.75
# Measured up to 512 channels (ResNet-18's and ResNet-50's widest 3x3 layers); the transformed
# kernel it writes every call grows with their product.
WINOGRAD_CHANNELS = 512
# Its weight gradient sums over the tiles in products of C x K outputs: from 64 channels it beat
# the direct kernel (ResNet-18's layers, ResNet-20's last stage); at 16 and 32 it lost.
WINOGRAD_WEIGHT_GRADIENT_CHANNELS = 64
# bf16's F(2x2, 3x3) beat oneDNN 3.2's direct bf16 kernels (AVX512-BF16, AMD Zen 5) at ResNet-18's
# 3x3 layers (64-512 channels) and tied at 64 channels on 8x8 images; at 16 and 32 it lost. Not
# measured against AMX's kernels: where oneDNN's forward is another one, it keeps it.
WINOGRAD_BF16_CHANNELS = 64
WINOGRAD_BF16_REPLACES = ":avx512_core_bf16"


def _winograd_directions(
    lhs_shape,
    rhs_shape,
    dtype,
    window_strides,
    padding,
    rhs_dilation,
    groups,
    onednn_forward: str,
) -> tuple[bool, bool, bool]:
    """Per direction, whether a convolution on kernels of its own dtype runs it as Winograd
    (Lavin & Gray 2016): a 3x3 kernel, stride 1, one row and column of zeros around the image,
    no groups, 16 to 512 channels in multiples of 16, images that fill enough of its tiles. In
    float32 F(4x4, 3x3) on AVX-512 (`csrc/winograd_conv.cc`), the weight gradient from 64
    channels; in bf16 F(2x2, 3x3) on AVX512-BF16 (`csrc/winograd_bf16_conv.cc`) from 64
    channels where oneDNN's forward kernel (`onednn_forward`) is its AVX512-BF16 one, forward
    and input gradient only (its weight gradient: `csrc/bf16_conv3x3_weights.cc`).
    """
    _, height, width, in_channels = lhs_shape
    kernel_h, kernel_w, _, out_channels = rhs_shape
    bf16 = dtype == jnp.bfloat16
    tile = 2 if bf16 else 4

    def tile_use(size: int) -> float:
        return size / (tile * -(-size // tile))

    runs = (
        (kernel_h, kernel_w) == (3, 3)
        and window_strides == (1, 1)
        and rhs_dilation == (1, 1)
        and padding == ((1, 1), (1, 1))
        and groups == 1
        and in_channels % 16 == 0
        and out_channels % 16 == 0
        and max(in_channels, out_channels) <= WINOGRAD_CHANNELS
        and tile_use(height) * tile_use(width) >= WINOGRAD_TILE_USE
    )
    if bf16:
        runs = (
            runs
            and min(in_channels, out_channels) >= WINOGRAD_BF16_CHANNELS
            and onednn_forward.endswith(WINOGRAD_BF16_REPLACES)
            and native.winograd_bf16_available()
        )
        return runs, runs, False
    runs = runs and dtype == jnp.float32 and native.winograd_available()
    weights = min(in_channels, out_channels) >= WINOGRAD_WEIGHT_GRADIENT_CHANNELS
    return runs, runs, runs and weights


# The extension's bf16 3x3 weight gradient beat oneDNN 3.2's AVX512-BF16 kernel (jit_bf16) on AMD
# Zen 5 (bench/README.md) from this many output channels: ResNet-18's layers and ResNet-20's 32
# and 64; at 16 (ResNet-20's first stage) it lost. Not measured against AMX's kernels: those
# keep oneDNN.
BF16_WEIGHT_GRADIENT_CHANNELS = 32
BF16_WEIGHT_GRADIENT_REPLACES = "jit_bf16:avx512_core_bf16"


def _runs_bf16_weight_gradient(
    rhs_shape, window_strides, padding, rhs_dilation, groups, onednn_implementation: str
) -> bool:
    """Whether a bf16 convolution's weight gradient runs `csrc/bf16_conv3x3_weights.cc`: a 3x3
    kernel at stride 1 or 2, one row and column of zeros around the image, no groups, channels
    in multiples of 16 and at least `BF16_WEIGHT_GRADIENT_CHANNELS` out, where oneDNN's kernel
    is the one it was measured against. It sums the same products in float32 as oneDNN's
    kernel, in another order, and rounds once."""
    kernel_h, kernel_w, in_channels, out_channels = rhs_shape
    return (
        onednn_implementation == BF16_WEIGHT_GRADIENT_REPLACES
        and (kernel_h, kernel_w) == (3, 3)
        and window_strides in ((1, 1), (2, 2))
        and rhs_dilation == (1, 1)
        and padding == ((1, 1), (1, 1))
        and groups == 1
        and in_channels % 16 == 0
        and out_channels % 16 == 0
        and out_channels >= BF16_WEIGHT_GRADIENT_CHANNELS
        and native.bf16_weights_available()
    )


# oneDNN 3.2's direct float32 weight-gradient kernels lose to XLA's from this many input and
# output channels per group on AVX2 (AMD Zen 3: from ResNet-18's layer 2); below, oneDNN's wins.
# On AVX-512 XLA's won only at 512 channels and only alone: in a train step it runs beside the
# extension's calls on the same cores, and the step was no faster on Zen 4 or Intel and slower
# on Zen 5 (bench/README.md), so oneDNN keeps them. bf16's kernels and the others keep oneDNN.
XLA_WEIGHT_GRADIENT_FROM = {"jit:avx2": 128}


def _xla_is_faster(direction: int, implementation: str, rhs_shape, groups: int) -> bool:
    """Where XLA's kernel for `direction` was measured faster than oneDNN's `implementation`."""
    channels = XLA_WEIGHT_GRADIENT_FROM.get(implementation)
    if direction != native.BACKWARD_WEIGHTS or channels is None:
        return False
    in_per_group, out_per_group = rhs_shape[2], rhs_shape[3] // groups
    return in_per_group >= channels and out_per_group >= channels


# Depthwise convolutions (one filter per channel: MobileNets, EfficientNets) keep oneDNN's
# kernels in every direction: XLA's grouped convolution was many times slower at every depthwise
# layer of MobileNet V3-Large and EfficientNet-B0, in float32 and bf16 (bench/README.md, "the
# mobile networks"). The exception is two bf16 directions for which oneDNN 3.2 picks one
# of these generic bf16 kernels instead of a depthwise one (5x5 weight gradients, input
# gradients at stride 2): its float32 depthwise kernel on the widened operands was faster there,
# so those directions compute in float32. Not measured against AMX's kernels: they keep oneDNN's.
BF16_DEPTHWISE_WIDENS = ("jit_bf16:avx512_core_bf16", "brgconv_strided:avx512_core_bf16")


def _widens_bf16_depthwise(
    kernel_dtype: Any, implementation: str, lhs_shape, rhs_shape, groups: int
) -> bool:
    """Whether a direction of a depthwise convolution (groups = input channels = output
    channels) skips oneDNN's bf16 kernel `implementation` for its float32 kernel (the operands
    widened exactly, the result rounded once: the same float32 sums): where that bf16 kernel
    is one of `BF16_DEPTHWISE_WIDENS`."""
    return (
        jnp.dtype(kernel_dtype) == jnp.bfloat16
        and 1 < groups == lhs_shape[3] == rhs_shape[3]
        and implementation in BF16_DEPTHWISE_WIDENS
    )


def _dilated(kernel: Sequence[int], dilation: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(
        (k - 1) * d + 1 for k, d in zip(kernel, dilation or (1,) * len(kernel), strict=True)
    )


# Per direction: which operands carry the batch, and whether the result sums over it.
_BATCHED = {
    native.FORWARD: ((True, False), False),  # (lhs, rhs) -> out
    native.BACKWARD_DATA: ((True, False), False),  # (d_out, rhs) -> d_lhs
    native.BACKWARD_WEIGHTS: ((True, True), True),  # (lhs, d_out) -> d_rhs
}


def _xla_direction(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """`direction` of `plan`'s convolution on XLA; the linear maps' transposes for gradients."""
    if direction == native.FORWARD:
        return plan.xla(a, b)
    if direction == native.BACKWARD_DATA:
        lhs = jax.ShapeDtypeStruct(plan.lhs_shape, plan.dtype)
        return jax.linear_transpose(lambda x: plan.xla(x, b), lhs)(a)[0]
    rhs = jax.ShapeDtypeStruct(plan.rhs_shape, plan.dtype)
    return jax.linear_transpose(lambda w: plan.xla(a, w), rhs)(b)[0]


def _on_shard(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """`direction` on the batch `a` holds (the whole batch, or one device's shard of it)."""
    local = plan.for_batch(a.shape[0])
    if local.kernels[direction] is None:
        return _xla_direction(local, direction, a, b)
    return local.ffi(direction, a, b)


def _direction(plan: _Plan, direction: int, a: jax.Array, b: jax.Array) -> jax.Array:
    """One direction of the convolution: oneDNN's kernel where `plan` has one, else XLA's."""
    if plan.kernels[direction] is None:
        return _xla_direction(plan, direction, a, b)
    batched, summed = _BATCHED[direction]

    def cpu(a, b):
        kernel = functools.partial(_on_shard, plan, direction)
        return sharding.over_batch(kernel, a, b, batched=batched, summed=summed)

    return backend.on_cpu(cpu, functools.partial(_xla_direction, plan, direction), a, b)


def _native_conv(lhs: jax.Array, rhs: jax.Array, plan: _Plan) -> jax.Array:
    """The convolution on `plan`'s kernels, differentiable to any order (`zoo.ops.autodiff`):
    a bilinear map, so every derivative of it is a sum of its three directions."""

    def forward(lhs, rhs):
        return (_direction(plan, native.FORWARD, lhs, rhs),), ()

    def cotangent(primals, residuals, cotangents):
        (lhs, rhs), (d_out,) = primals, cotangents
        d_lhs = _direction(plan, native.BACKWARD_DATA, d_out, rhs)
        d_rhs = _direction(plan, native.BACKWARD_WEIGHTS, lhs, d_out)
        return sharding.cotangent_like(d_lhs, lhs), sharding.cotangent_like(d_rhs, rhs)

    conv = autodiff.differentiable(
        forward,
        lambda lhs, rhs: (plan.xla(lhs, rhs),),
        cotangent=cotangent,
        bilinear=True,
        name="conv_general_dilated",
    )
    return conv(lhs, rhs)[0]


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
    """`jax.lax.conv_general_dilated`, on oneDNN's kernels where the computation runs on a CPU
    that has them for this configuration (see the module docstring), on XLA otherwise."""
    arguments = dict(
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    plan = _plan(lhs, rhs, **arguments)
    if plan is None:
        return lax.conv_general_dilated(lhs, rhs, **arguments)
    return _native_conv(lhs, rhs, plan)


def runs_on_onednn(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
) -> bool:
    """Whether `conv_general_dilated` with these arguments runs on oneDNN's kernels in all three
    directions where it runs on CPU; asked at trace time, from shapes and dtypes alone."""
    plan = _plan(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
    )
    return plan is not None and None not in plan.kernels


class Conv(nn.Conv):
    """`flax.linen.Conv` through the zoo's convolution (`conv_general_dilated` above).

    Same fields, parameters and parameter names as `nn.Conv`: checkpoints are interchangeable.
    """

    conv_general_dilated: Any = conv_general_dilated
    kernel_init: Any = initializers.lecun_normal()  # nn.Conv's, drawn flat: faster to compile

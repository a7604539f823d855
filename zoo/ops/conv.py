"""The zoo's convolution: oneDNN kernels on CPU, XLA's convolution everywhere else.

`conv_general_dilated` takes `jax.lax.conv_general_dilated`'s arguments and computes the same
thing. Inside one jitted function, `jax.lax.platform_dependent` picks per backend: on CPU the
oneDNN kernels of `csrc/onednn_conv.cc` (a `jax.custom_vjp` over forward, backward-data and
backward-weights FFI calls), on GPU and TPU `lax.conv_general_dilated`. Each of the three
directions runs on oneDNN only where oneDNN has a real (JIT) kernel for it on this CPU, asked at
trace time, and XLA's was not measured faster (`XLA_WEIGHT_GRADIENT_FROM`); anything else stays
on XLA: layouts other than NHWC/HWIO, `lhs_dilation` (transposed convolutions), negative
padding, mixed dtypes, `preferred_element_type`, `batch_group_count`. `precision` is passed on
to XLA and otherwise ignored: oneDNN computes float32 in float32 and bf16 with float32
accumulation, on its bf16 kernels where the CPU has them (AVX512-BF16, AMX), else on its
float32 kernels with the bf16 operands widened exactly and the result rounded once to bf16.

`Conv` is `flax.linen.Conv` with this op: the same parameters under the same names and the same
initial values (`zoo.ops.initializers`), so checkpoints move between the two unchanged.

Where oneDNN is kept out altogether (`portable()`, several CPU devices): `zoo.ops.backend`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops import backend, initializers, native

NHWC_HWIO = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)
DIRECTIONS = tuple(native.CONV_TARGETS)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A convolution oneDNN can run, with which of its three directions it runs natively."""

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

    def ffi(self, direction: int, result: jax.ShapeDtypeStruct, *operands: jax.Array) -> jax.Array:
        """`direction` on oneDNN, in its kernel's dtype; the result in `result`'s."""
        (top, bottom), (left, right) = self.padding
        dtype = self.kernels[direction]
        call = jax.ffi.ffi_call(
            native.CONV_TARGETS[direction],
            jax.ShapeDtypeStruct(result.shape, dtype),
            vmap_method="sequential",
        )
        return call(
            *(operand.astype(dtype) for operand in operands),
            window_strides=np.array(self.window_strides, np.int64),
            padding=np.array([top, bottom, left, right], np.int64),
            rhs_dilation=np.array(self.rhs_dilation, np.int64),
            feature_group_count=np.int64(self.feature_group_count),
            num_threads=np.int64(self.num_threads),
        ).astype(result.dtype)


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
    if any(p < 0 for pair in padding for p in pair):
        return None
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    out = jax.eval_shape(
        functools.partial(
            lax.conv_general_dilated,
            window_strides=window_strides,
            padding=padding,
            rhs_dilation=rhs_dilation,
            dimension_numbers=NHWC_HWIO,
            feature_group_count=feature_group_count,
        ),
        jax.ShapeDtypeStruct(lhs.shape, dtype),
        jax.ShapeDtypeStruct(rhs.shape, dtype),
    ).shape
    if 0 in lhs.shape or 0 in rhs.shape or 0 in out:
        return None
    threads = backend.team_size()

    def has_kernel(direction: int, kernel_dtype: Any) -> bool:
        config = (
            *lhs.shape,
            *rhs.shape[:2],
            rhs.shape[3],
            *out[1:3],
            *window_strides,
            *padding[0],
            *padding[1],
            *rhs_dilation,
            feature_group_count,
            native.PRECISIONS[jnp.dtype(kernel_dtype)],
            threads,
        )
        found, name = native.implementation(native.CONV, direction, config)
        measured = dtype == jnp.float32  # the convolution's own dtype, not the kernel's
        return found and not (
            measured and _xla_is_faster(direction, name, rhs.shape, feature_group_count)
        )

    kernels = tuple(
        native.kernel_dtype(dtype, functools.partial(has_kernel, direction))
        for direction in DIRECTIONS
    )
    if all(kernel is None for kernel in kernels):
        return None
    return _Plan(
        tuple(window_strides),
        padding,
        rhs_dilation,
        feature_group_count,
        precision,
        threads,
        tuple(out),
        kernels,
    )


# oneDNN 3.2's AVX2 weight-gradient kernel loses to XLA's from this many input and output
# channels per group (ResNet-18's layers 2-4: 1.6-2.1x standalone, the train step 1.07x faster
# with XLA's; below it, e.g. ResNet-20's 16-64 channels, oneDNN's wins: bench/README.md).
# Measured in float32 on AVX2 only: bf16 and other ISAs' kernels keep oneDNN.
XLA_WEIGHT_GRADIENT_FROM = {"jit:avx2": 128}


def _xla_is_faster(direction: int, implementation: str, rhs_shape, groups: int) -> bool:
    """Where XLA's kernel for `direction` was measured faster than oneDNN's `implementation`."""
    channels = XLA_WEIGHT_GRADIENT_FROM.get(implementation)
    if direction != native.BACKWARD_WEIGHTS or channels is None:
        return False
    in_per_group, out_per_group = rhs_shape[2], rhs_shape[3] // groups
    return in_per_group >= channels and out_per_group >= channels


def _dilated(kernel: Sequence[int], dilation: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(
        (k - 1) * d + 1 for k, d in zip(kernel, dilation or (1,) * len(kernel), strict=True)
    )


def _direction(plan: _Plan, direction: int, result: jax.ShapeDtypeStruct, xla_fn, *operands):
    """One direction of the convolution: oneDNN's kernel where `plan` has one, else `xla_fn`."""
    if plan.kernels[direction] is None:
        return xla_fn(*operands)
    return backend.on_cpu(lambda *args: plan.ffi(direction, result, *args), xla_fn, *operands)


def _forward(lhs: jax.Array, rhs: jax.Array, plan: _Plan) -> jax.Array:
    out = jax.ShapeDtypeStruct(plan.out_shape, lhs.dtype)
    return _direction(plan, native.FORWARD, out, plan.xla, lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _native_conv(lhs: jax.Array, rhs: jax.Array, plan: _Plan) -> jax.Array:
    return _forward(lhs, rhs, plan)


def _native_conv_fwd(lhs, rhs, plan):
    return _forward(lhs, rhs, plan), (lhs, rhs)


def _native_conv_bwd(plan, residuals, d_out):
    lhs, rhs = residuals

    def xla_d_lhs(d_out, rhs):
        return jax.vjp(lambda x: plan.xla(x, rhs), lhs)[1](d_out)[0]

    def xla_d_rhs(lhs, d_out):
        return jax.vjp(lambda w: plan.xla(lhs, w), rhs)[1](d_out)[0]

    as_lhs = jax.ShapeDtypeStruct(lhs.shape, lhs.dtype)
    as_rhs = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    d_lhs = _direction(plan, native.BACKWARD_DATA, as_lhs, xla_d_lhs, d_out, rhs)
    d_rhs = _direction(plan, native.BACKWARD_WEIGHTS, as_rhs, xla_d_rhs, lhs, d_out)
    return d_lhs, d_rhs


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)


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


class Conv(nn.Conv):
    """`flax.linen.Conv` through the zoo's convolution (`conv_general_dilated` above).

    Same fields, parameters and parameter names as `nn.Conv`: checkpoints are interchangeable.
    """

    conv_general_dilated: Any = conv_general_dilated
    kernel_init: Any = initializers.lecun_normal()  # nn.Conv's, drawn flat: faster to compile

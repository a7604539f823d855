"""The zoo's batch normalisation arithmetic: oneDNN's kernels on CPU, XLA's fusions elsewhere.

`batch_norm_training(x, scale, bias, epsilon)` normalises channels-last `x` (any rank, the
channels last) with the batch's mean and biased variance over every other axis and returns them
with the result; `batch_norm_inference(x, mean, var, scale, bias, epsilon)` normalises with the
given statistics. Both compute in float32 (`scale`, `bias` and the statistics are float32) and
return the result in `x`'s dtype (float32 or bfloat16 on oneDNN). With `relu=True` the result
is `jax.nn.relu` of it, gradient included (zero where the normalised value is not positive),
fused into oneDNN's kernels where they run: no XLA pass over the activation for the ReLU, nor
for its gradient's mask, which the training kernel keeps as a bit per element. A NaN stays a
NaN, as in `jax.nn.relu` (oneDNN's ReLU answers 0 for one; the kernels put it back).

On CPU each runs on oneDNN's batch-normalisation primitives (`csrc/onednn_batch_norm.cc`),
differentiable to any order in both modes (`zoo.ops.autodiff`): a forward call and a backward
one that gives the gradients of `x`, `scale` and `bias` in one pass, reading each per-channel
vector in place where XLA:CPU's fusions of the same arithmetic (the reference here, and what
GPU and TPU run) materialise it at the activation's size. Each kind runs on oneDNN only where
it has a real (JIT) kernel for it, asked at trace time: bf16 without one widens to oneDNN's
float32 kernel where that exists, anything else stays on XLA. Cotangents of the returned
statistics (zero in a train step, where they only update the running averages) are added in XLA
only where they are nonzero.

Where oneDNN is kept out altogether (`portable()`, several devices: the statistics span the
batch, and XLA partitions its own reductions): `zoo.ops.backend`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops import backend, native, sharding

_F32 = jnp.float32
KINDS = tuple(native.BATCH_NORM_TARGETS)


def _normalise(x, mean, var, scale, bias, epsilon, relu=False):
    y = (x.astype(_F32) - mean) * lax.rsqrt(var + epsilon)
    y = (y * scale + bias).astype(x.dtype)
    return jax.nn.relu(y) if relu else y


def _reference_training(x, scale, bias, epsilon, relu=False):
    axes = tuple(range(x.ndim - 1))
    batch = x.astype(_F32)
    mean = jnp.mean(batch, axes)
    var = jnp.mean(jnp.square(batch - mean), axes)
    return _normalise(x, mean, var, scale, bias, epsilon, relu), mean, var


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A batch norm oneDNN can run on `shape` (NHWC), with the dtype each kind computes in
    (None where XLA does). With `relu`, the training kinds fuse the ReLU (both on oneDNN, the
    forward writing a workspace of `workspace_bytes` for the gradient), inference fuses it
    where it runs there, and the inference gradient takes the ReLU's mask from XLA."""

    shape: tuple[int, int, int, int]
    epsilon: float
    relu: bool
    num_threads: int
    kernels: tuple[Any, Any, Any, Any]  # per kind: training, inference, their gradients
    workspace_bytes: int = 0

    def workspace(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.workspace_bytes,), jnp.uint8)

    def ffi(self, kind: int, results: tuple[jax.ShapeDtypeStruct, ...], *operands: jax.Array):
        """`kind` on oneDNN, activations in its kernel's dtype; results in `results`' dtypes."""
        dtype = self.kernels[kind]

        def in_kernel_dtype(a: jax.ShapeDtypeStruct | jax.Array) -> Any:
            if a.dtype == jnp.uint8:  # the workspace
                return a.dtype
            return dtype if a.shape == self.shape else _F32

        attributes = {}
        if kind in (native.TRAINING_BACKWARD, native.INFERENCE_BACKWARD):
            attributes["use_global_stats"] = kind == native.INFERENCE_BACKWARD
        outputs = backend.call(
            native.BATCH_NORM_TARGETS[kind],
            tuple(jax.ShapeDtypeStruct(r.shape, in_kernel_dtype(r)) for r in results),
            *(a.astype(in_kernel_dtype(a)) for a in operands),
            batch=sharding.whole_batch,
            epsilon=self.epsilon,
            relu=self.relu_in(kind),
            num_threads=self.num_threads,
            **attributes,
        )
        return tuple(o.astype(r.dtype) for o, r in zip(outputs, results, strict=True))

    def relu_in(self, kind: int) -> bool:
        return _fuses_relu(self.relu, kind)

    def run(self, kind: int, results, xla_fn, *operands: jax.Array):
        """`kind` on oneDNN where this plan has a kernel for it, else `xla_fn`."""
        if self.kernels[kind] is None:
            return xla_fn(*operands)
        return self.ffi(kind, results, *operands)


def _fuses_relu(relu: bool, kind: int) -> bool:
    """Whether `kind`'s kernel fuses the ReLU of a `relu` batch norm: the inference gradient's
    never does (its forward writes no workspace; XLA masks its cotangent)."""
    return relu and kind != native.INFERENCE_BACKWARD


def _config(kind: int, shape, dtype: Any, epsilon: float, relu: bool, threads: int):
    """`NormConfig`'s fields (csrc/onednn_batch_norm.cc) of `kind` on `shape`."""
    bits = int(np.float32(epsilon).view(np.uint32))
    return (*shape, native.PRECISIONS[jnp.dtype(dtype)], bits, int(relu), threads)


# oneDNN 3.2's batch norms on channels-last maps have full-speed kernels where the channels fill
# its vectors. For other channel counts (MobileNets' 24, 40, 72, 120, 184, 200) it picks a
# narrower JIT kernel on an AVX-512 CPU (`bnorm_jit:avx2` in float32), which still beats XLA's
# ops in training mode but loses to them in inference mode, or a generic loop (`nspc_bnorm:any`
# in bf16), which loses in both (bench/README.md, "The mobile networks").
VECTOR_CHANNELS = 16
GENERIC_KERNEL = ":any"


def _kernel_pays(kind: int, shape, config_of) -> bool:
    """Whether oneDNN runs batch norm `kind` on `shape` (NHWC; `config_of(shape)` is its config)
    with a kernel measured faster than XLA's ops: never its generic loop; in training mode any
    JIT kernel; in inference mode only the one it picks when the channels are a multiple of
    `VECTOR_CHANNELS` (on a CPU whose kernels take any channel count at full speed, AVX2's,
    the two are the same)."""
    found, implementation = native.implementation(native.BATCH_NORM, kind, config_of(shape))
    if not found or implementation.endswith(GENERIC_KERNEL):
        return False
    channels = shape[-1]
    full = -(-channels // VECTOR_CHANNELS) * VECTOR_CHANNELS
    if kind in (native.TRAINING, native.TRAINING_BACKWARD) or full == channels:
        return True
    _, full_implementation = native.implementation(
        native.BATCH_NORM, kind, config_of((*shape[:-1], full))
    )
    return implementation == full_implementation


def _plan(x: jax.Array, epsilon: float, kinds: tuple[int, int], relu: bool = False) -> _Plan | None:
    """The oneDNN plan of a batch norm of `x` for `kinds` (a forward and its gradient), or None
    where both run on XLA or (with `relu`) where oneDNN cannot run both training kinds with
    the ReLU fused."""
    if not backend.native_applies() or not backend.single_device():
        return None
    if x.dtype not in native.PRECISIONS:
        return None
    if x.ndim < 2 or 0 in x.shape:
        return None
    shape = x.shape if x.ndim == 4 else (math.prod(x.shape[:-1]), 1, 1, x.shape[-1])
    epsilon = float(epsilon)

    def config(kind: int, dtype: Any, threads: int, on_shape=shape) -> tuple[int, ...]:
        return _config(kind, on_shape, dtype, epsilon, _fuses_relu(relu, kind), threads)

    def kernels_on(threads: int) -> list[Any]:
        kernels = [None] * len(KINDS)
        for kind in kinds:
            kernels[kind] = native.kernel_dtype(
                x.dtype,
                lambda d, kind=kind: _kernel_pays(
                    kind, shape, lambda s, kind=kind, d=d: config(kind, d, threads, s)
                ),
            )
        return kernels

    threads, kernels = backend.threads_for_kernels(
        x.dtype, lambda kernel_dtype: backend.pass_team(x, kernel_dtype), kernels_on
    )
    if all(kernel is None for kernel in kernels):
        return None
    workspace = 0
    if relu and native.TRAINING in kinds:
        training = kernels[native.TRAINING]
        # The gradient reads the forward's workspace: both on oneDNN, in one dtype.
        if training is None or kernels[native.TRAINING_BACKWARD] != training:
            return None
        workspace = native.batch_norm_workspace_bytes(config(native.TRAINING, training, threads))
    return _Plan(shape, epsilon, relu, threads, tuple(kernels), workspace)


def _vectors(plan: _Plan, count: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    return (jax.ShapeDtypeStruct(plan.shape[-1:], _F32),) * count


# Training mode: (x, scale, bias) -> (y, mean, var).
def _training_forward(x, scale, bias, plan: _Plan):
    """(y, mean, var, the ReLU's workspace: empty without one or on XLA)."""
    results = (jax.ShapeDtypeStruct(x.shape, x.dtype), *_vectors(plan, 2), plan.workspace())

    def xla(x, scale, bias):
        y, mean, var = _reference_training(x, scale, bias, plan.epsilon, plan.relu)
        return y, mean, var, jnp.zeros(plan.workspace().shape, jnp.uint8)

    return plan.run(native.TRAINING, results, xla, x, scale, bias)


def _native_training(x, scale, bias, plan: _Plan):
    """Training-mode batch norm on `plan`'s kernels, differentiable to any order
    (`zoo.ops.autodiff`); its gradient one backward call, plus XLA's for the statistics'
    cotangents where they are nonzero."""

    def forward(x, scale, bias):
        y, mean, var, workspace = _training_forward(x, scale, bias, plan)
        return (y, mean, var), (mean, var, workspace, y)

    def tangent(primals, residuals, tangents):
        # The statistics' tangents from the kernels' mean, then `_normalise`'s at the kernels'
        # statistics (differentiating `reference` would compute the statistics again first).
        (x, scale, bias), (mean, var, _, y), (d_x, d_scale, d_bias) = primals, residuals, tangents
        axes = tuple(range(x.ndim - 1))
        d_x32 = d_x.astype(_F32)
        d_mean = jnp.mean(d_x32, axes)
        d_var = 2 * jnp.mean((x.astype(_F32) - mean) * d_x32, axes)  # the mean of x - mean is 0
        _, d_y = jax.jvp(
            functools.partial(_normalise, epsilon=plan.epsilon),
            (x, mean, var, scale, bias),
            (d_x, d_mean, d_var, d_scale, d_bias),
        )
        if plan.relu:  # the kernels' own mask, as the gradient's
            d_y = jnp.where(y > 0, d_y, jnp.zeros((), d_y.dtype))
        return d_y, d_mean, d_var

    def cotangent(primals, residuals, cotangents):
        (x, scale, bias), (mean, var, workspace, _) = primals, residuals
        d_y, d_mean, d_var = cotangents
        if d_y is None:
            d_y = jnp.zeros(x.shape, x.dtype)

        def xla(x, d_y, mean, var, scale, workspace):
            reference = functools.partial(_reference_training, epsilon=plan.epsilon, relu=plan.relu)
            _, vjp = jax.vjp(lambda *args: reference(*args)[0], x, scale, bias)
            return vjp(d_y)

        results = (jax.ShapeDtypeStruct(x.shape, x.dtype), *_vectors(plan, 2))
        d_x, d_scale, d_bias = plan.run(
            native.TRAINING_BACKWARD, results, xla, x, d_y, mean, var, scale, workspace
        )
        # The statistics' own cotangents: mean = sum(x) / n, var = sum((x - mean)^2) / n.
        count = math.prod(x.shape[:-1])
        extra = []
        if d_mean is not None:
            extra.append(d_mean / count)
        if d_var is not None:
            extra.append(d_var * 2 * (x.astype(_F32) - mean) / count)
        if extra:
            d_x = (d_x.astype(_F32) + sum(extra)).astype(x.dtype)
        return tuple(map(sharding.cotangent_like, (d_x, d_scale, d_bias), primals))

    def reference(x, scale, bias):
        return _reference_training(x, scale, bias, plan.epsilon, plan.relu)

    return backend.native_op("batch_norm_training", reference, forward, cotangent, tangent=tangent)(
        x, scale, bias
    )


# Inference mode: (x, mean, var, scale, bias) -> y.
def _inference_forward(x, mean, var, scale, bias, plan: _Plan):
    (y,) = plan.run(
        native.INFERENCE,
        (jax.ShapeDtypeStruct(x.shape, x.dtype),),
        lambda *args: (_normalise(*args, plan.epsilon, plan.relu),),
        x,
        mean,
        var,
        scale,
        bias,
    )
    return y


def _native_inference(x, mean, var, scale, bias, plan: _Plan):
    """Inference-mode batch norm on `plan`'s kernels, differentiable to any order
    (`zoo.ops.autodiff`)."""

    def forward(*primals):
        y = _inference_forward(*primals, plan)
        return (y,), (y,) if plan.relu else ()

    def cotangent(primals, residuals, cotangents):
        (x, mean, var, scale, bias), (d_y,) = primals, cotangents
        if plan.relu:  # jax.nn.relu's gradient: none where the result is not positive
            (y,) = residuals
            d_y = jnp.where(y > 0, d_y, jnp.zeros((), d_y.dtype))

        def xla(x, d_y, mean, var, scale, workspace):
            _, vjp = jax.vjp(
                lambda *args: _normalise(*args, plan.epsilon), x, mean, var, scale, bias
            )
            d_x, _, _, d_scale, d_bias = vjp(d_y)
            return d_x, d_scale, d_bias

        results = (jax.ShapeDtypeStruct(x.shape, x.dtype), *_vectors(plan, 2))
        no_workspace = jnp.zeros((0,), jnp.uint8)
        d_x, d_scale, d_bias = plan.run(
            native.INFERENCE_BACKWARD, results, xla, x, d_y, mean, var, scale, no_workspace
        )
        # y = (x - mean) * inv * scale + bias, inv = (var + eps)^-1/2;
        # d_scale = sum(d_y (x - mean) inv).
        inv = lax.rsqrt(var + plan.epsilon)
        d_mean = -d_bias * scale * inv
        d_var = -0.5 * d_scale * scale * inv * inv
        cotangents = (d_x, d_mean, d_var, d_scale, d_bias)
        return tuple(map(sharding.cotangent_like, cotangents, primals))

    def reference(*primals):
        return (_normalise(*primals, plan.epsilon, plan.relu),)

    return backend.native_op("batch_norm_inference", reference, forward, cotangent)(
        x, mean, var, scale, bias
    )[0]


def _as_nhwc(x: jax.Array, plan: _Plan) -> jax.Array:
    return x if x.shape == plan.shape else x.reshape(plan.shape)


def batch_norm_training(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, *, relu: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(normalised `x`, batch mean, biased batch variance), statistics over all but the last
    axis; `scale` and `bias` float32 vectors of the channels. `relu`: the result's ReLU."""
    kinds = (native.TRAINING, native.TRAINING_BACKWARD)
    plan = _plan(x, epsilon, kinds, relu)
    if plan is None and relu:  # the ReLU on XLA, after oneDNN's batch norm where that runs
        y, mean, var = batch_norm_training(x, scale, bias, epsilon)
        return jax.nn.relu(y), mean, var
    if plan is None:
        return _reference_training(x, scale, bias, epsilon)
    y, mean, var = _native_training(_as_nhwc(x, plan), scale, bias, plan)
    return y.reshape(x.shape), mean, var


def batch_norm_inference(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
    *,
    relu: bool = False,
) -> jax.Array:
    """`x` normalised with the given statistics (float32 vectors of the channels, as are
    `scale` and `bias`). `relu`: the result's ReLU."""
    plan = _plan(x, epsilon, (native.INFERENCE, native.INFERENCE_BACKWARD), relu)
    if plan is None:
        return _normalise(x, mean, var, scale, bias, epsilon, relu)
    y = _native_inference(_as_nhwc(x, plan), mean, var, scale, bias, plan)
    return y.reshape(x.shape)

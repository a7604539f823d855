"""The zoo's oneDNN calls under a batch-sharded `jax.jit`: each device runs its own shard.

XLA's SPMD partitioner cannot look inside a custom call: it gathers the whole batch onto every
device (or, with `jax.distributed`, every process), and each computes all of it.
`over_batch(fn, *operands, batched=..., summed=...)` gives a kernel the rule the convolution's
directions obey: the leading axis of each `batched` operand is the batch; a batch-parallel
result (forward, input gradient) keeps the batch's sharding, a `summed` one (weight gradient, a
sum over the batch) is the `psum` of the shards' partial sums. Every other axis is replicated
(an operand sharded along one is gathered for the call, as XLA would), and a batch the shard
count does not divide runs whole on every device (XLA pads uneven shards, and padding rows would
enter the sums).

- Shardings known only to the partitioner (`AxisType.Auto` mesh axes): the rule is a
  `jax.experimental.custom_partitioning`, which has no batching rule, so under `jax.vmap` the
  call goes back to plain `fn` (vmapped sequentially, on the gathered batch).
- Shardings in the operands' types (`AxisType.Explicit` axes, `jax.make_mesh`'s default): the
  rule is a `jax.shard_map` over the batch's axes, chosen while tracing. A custom call's result
  carries no sharding in its type, and JAX rejects the mismatch (in `grad`, for one).
- One device with no sharding in the types, or inside `shard_map` (all axes manual): `fn` as is.

Inside `shard_map` a value's type also says over which manual axes it varies. JAX's own ops
give a result the union of their operands' (`vary_like`), and the transpose of that implicit
broadcast is a `psum`; a custom call and a hand-written cotangent (`zoo.ops.autodiff`) must do
the same by hand (`cotangent_like`), or JAX rejects the types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

Kernel = Callable[..., jax.Array]


def split(*, batched: Sequence[bool], summed: bool) -> Callable[..., Any]:
    """`over_batch` with these `batched` operands and `summed` result, as a `batch` rule for
    `zoo.ops.backend.call`."""
    return lambda fn, *operands: over_batch(fn, *operands, batched=batched, summed=summed)


def over_batch(fn: Kernel, *operands: jax.Array, batched: Sequence[bool], summed: bool):
    """`fn(*operands)`, partitioned over the batch when the computation is (see module)."""
    batched = tuple(batched)
    if _explicit_mesh(operands) is not None:
        return _explicit(fn, operands, batched, summed)
    if jax.device_count("cpu") == 1:
        return fn(*operands)
    partitioned = custom_partitioning(fn)
    partitioned.def_partition(
        partition=lambda mesh, args, result: _partition(fn, batched, summed, mesh, args),
        infer_sharding_from_operands=lambda mesh, args, result: _result_sharding(
            summed, mesh, _batch_axes(batched, args)
        ),
        sharding_rule=_sharding_rule(fn, operands, batched, summed),
        **({"reduction_factors": ("batch",)} if summed else {}),
    )
    vmappable = jax.custom_batching.custom_vmap(partitioned)

    @vmappable.def_vmap
    def _unpartitioned(axis_size, in_batched, *args):
        in_axes = tuple(0 if b else None for b in in_batched)
        return jax.vmap(fn, in_axes=in_axes)(*args), True

    return vmappable(*operands)


def _split_axes(sharding: Any, batch: int) -> tuple[str, ...]:
    """The mesh axes `sharding` splits a leading axis of `batch` over: () where it does not
    split it, or not evenly."""
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return ()
    axes = (spec[0],) if isinstance(spec[0], str) else tuple(spec[0])
    return () if batch % math.prod(sharding.mesh.shape[a] for a in axes) else axes


def _on_each_shard(fn: Kernel, summed: bool, axes: tuple[str, ...]) -> Kernel:
    """`fn` as each device runs it on its shard: a summed result all-reduced over `axes`."""
    if not (summed and axes):
        return fn
    return lambda *local: jax.lax.psum(fn(*local), axes)


def _explicitly_sharded(operand: jax.Array) -> bool:
    """Whether `operand`'s type carries a sharding (`AxisType.Explicit` mesh axes)."""
    return any(axes is not None for axes in jax.typeof(operand).sharding.spec)


def _explicit_mesh(operands: Sequence[jax.Array]) -> Any:
    """The mesh in the operands' types, or None where no type carries a sharding."""
    return next((jax.typeof(op).sharding.mesh for op in operands if _explicitly_sharded(op)), None)


def _explicit(fn: Kernel, operands, batched, summed: bool):
    """The explicit-sharding form of the rule, chosen while tracing: `jax.shard_map` over the
    batch's axes, or `fn` on replicated operands where the batch is not split evenly."""
    mesh = _explicit_mesh(operands)
    batch = operands[batched.index(True)]
    axes = _split_axes(jax.typeof(batch).sharding, batch.shape[0])
    specs = tuple(PartitionSpec(axes or None) if b else PartitionSpec() for b in batched)
    operands = [
        jax.sharding.reshard(op, NamedSharding(mesh, spec))
        if jax.typeof(op).sharding.spec != spec
        else op
        for op, spec in zip(operands, specs, strict=True)
    ]
    if not axes:
        return fn(*operands)
    out_spec = PartitionSpec() if summed else PartitionSpec(axes)
    mapped = jax.shard_map(
        _on_each_shard(fn, summed, axes),
        mesh=mesh,
        in_specs=specs,
        out_specs=out_spec,
        axis_names=set(axes),
    )
    return mapped(*operands)


def _sharding_rule(fn: Kernel, operands, batched: Sequence[bool], summed: bool) -> str:
    """Shardy's rule: only the factor `batch` is shared; every other axis has its own."""
    names = (f"d{i}" for i in range(10_000))

    def factors(ndim: int, with_batch: bool) -> str:
        return " ".join(["batch"] * with_batch + [next(names) for _ in range(ndim - with_batch)])

    result_ndim = jax.eval_shape(fn, *operands).ndim
    ins = ", ".join(factors(op.ndim, b) for op, b in zip(operands, batched, strict=True))
    return f"{ins} -> {factors(result_ndim, not summed)}"


def _batch_axes(batched: Sequence[bool], args) -> tuple[str, ...]:
    """The mesh axes the partitioner's operands split the batch over (see `_split_axes`)."""
    first = args[batched.index(True)]
    return _split_axes(first.sharding, first.shape[0])


def _result_sharding(summed: bool, mesh, axes: tuple[str, ...]) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(axes) if axes and not summed else PartitionSpec())


def _partition(fn: Kernel, batched, summed: bool, mesh, args):
    axes = _batch_axes(batched, args)
    shardings = tuple(
        NamedSharding(mesh, PartitionSpec(axes) if b and axes else PartitionSpec()) for b in batched
    )
    return mesh, _on_each_shard(fn, summed, axes), _result_sharding(summed, mesh, axes), shardings


def whole_batch(fn: Callable[..., Any], *operands: jax.Array) -> Any:
    """`fn(*operands)` for a kernel over the whole batch (batch norm's statistics, a pooling's
    images) on one device whose types may carry a (trivial) sharding: it runs on the operands
    typed as replicated, and each result of the first operand's rank and batch (its leading
    axis) gets that operand's sharding back."""
    mesh = _explicit_mesh(operands)
    if mesh is None:
        return fn(*operands)
    like = NamedSharding(mesh, jax.typeof(operands[0]).sharding.spec)
    replicated = NamedSharding(mesh, PartitionSpec())
    results = fn(*(jax.sharding.reshard(op, replicated) for op in operands))
    batch_shape = operands[0].shape

    def batched(r: jax.Array) -> bool:
        return r.ndim == len(batch_shape) and r.shape[:1] == batch_shape[:1]

    return jax.tree.map(lambda r: jax.sharding.reshard(r, like) if batched(r) else r, results)


def varying(x: jax.Array) -> frozenset:
    """The manual (`shard_map`) mesh axes over which `x`'s value varies."""
    return jax.typeof(x).manual_axis_type.varying


def vary_like(result: jax.Array, *operands: jax.Array) -> jax.Array:
    """`result` typed as varying over every manual axis one of `operands` varies over, as a
    JAX op's result is (a custom call's result is typed as varying over none)."""
    return _vary_over(result, frozenset().union(*map(varying, operands)))


def _vary_over(result: jax.Array, axes: frozenset) -> jax.Array:
    missing = axes - varying(result)
    return jax.lax.pcast(result, tuple(sorted(missing)), to="varying") if missing else result


def cotangent_like(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
    """A hand-written cotangent typed as its primal (see `cotangent_varying_over`)."""
    return cotangent_varying_over(cotangent, varying(primal))


def cotangent_varying_over(cotangent: jax.Array, axes: frozenset) -> jax.Array:
    """A hand-written cotangent typed as a primal varying over the manual `axes`: summed over
    the axes along which only the cotangent varies (the transpose of the implicit broadcast of
    the primal), made varying along those only the primal varies over."""
    extra = varying(cotangent) - axes
    if extra:
        cotangent = jax.lax.psum(cotangent, tuple(sorted(extra)))
    return _vary_over(cotangent, axes)

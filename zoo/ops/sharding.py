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
broadcast is a `psum`; a custom call and a `custom_vjp` must do the same by hand
(`cotangent_like`), or JAX rejects the types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

Kernel = Callable[..., jax.Array]


def over_batch(fn: Kernel, *operands: jax.Array, batched: Sequence[bool], summed: bool):
    """`fn(*operands)`, partitioned over the batch when the computation is (see module)."""
    batched = tuple(batched)
    if any(explicitly_sharded(op) for op in operands):
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


def explicitly_sharded(operand: jax.Array) -> bool:
    """Whether `operand`'s type carries a sharding (`AxisType.Explicit` mesh axes)."""
    return any(axes is not None for axes in jax.typeof(operand).sharding.spec)


def _explicit(fn: Kernel, operands, batched, summed: bool):
    """The explicit-sharding form of the rule, chosen while tracing: `jax.shard_map` over the
    batch's axes, or `fn` on replicated operands where the batch is not split evenly."""
    sharding = jax.typeof(operands[batched.index(True)]).sharding
    axes = sharding.spec[0] if sharding.spec else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    mesh = next(jax.typeof(op).sharding.mesh for op in operands if explicitly_sharded(op))
    if axes and operands[batched.index(True)].shape[0] % math.prod(mesh.shape[a] for a in axes):
        axes = ()
    specs = tuple(PartitionSpec(axes or None) if b else PartitionSpec() for b in batched)
    operands = [
        jax.sharding.reshard(op, NamedSharding(mesh, spec))
        if jax.typeof(op).sharding.spec != spec
        else op
        for op, spec in zip(operands, specs, strict=True)
    ]
    if not axes:
        return fn(*operands)
    return _shard_map(fn, operands, specs, summed, mesh, axes)


def _shard_map(fn: Kernel, operands, specs, summed: bool, mesh, axes: tuple[str, ...]):
    def per_shard(*local: jax.Array) -> jax.Array:
        out = fn(*local)
        return jax.lax.psum(out, axes) if summed else out

    out_spec = PartitionSpec() if summed else PartitionSpec(axes)
    mapped = jax.shard_map(
        per_shard, mesh=mesh, in_specs=specs, out_specs=out_spec, axis_names=set(axes)
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


def _batch_axes(batched: Sequence[bool], args) -> tuple[str, ...] | None:
    """The mesh axes the batch is split over, or None where it is not split (or unevenly)."""
    first = args[batched.index(True)]
    sharding = first.sharding
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return None
    axes = (spec[0],) if isinstance(spec[0], str) else tuple(spec[0])
    shards = math.prod(sharding.mesh.shape[a] for a in axes)
    if first.shape[0] % shards:
        return None
    return axes


def _result_sharding(summed: bool, mesh, axes: tuple[str, ...] | None) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec() if summed or axes is None else PartitionSpec(axes))


def _partition(fn: Kernel, batched, summed: bool, mesh, args):
    axes = _batch_axes(batched, args)
    shardings = tuple(
        NamedSharding(mesh, PartitionSpec(axes) if b and axes else PartitionSpec()) for b in batched
    )

    def per_shard(*local: jax.Array) -> jax.Array:
        out = fn(*local)
        return jax.lax.psum(out, axes) if summed and axes else out

    return mesh, per_shard, _result_sharding(summed, mesh, axes), shardings


def whole_batch(fn: Callable[..., tuple[jax.Array, ...]], *operands: jax.Array):
    """`fn(*operands)` for a kernel over the whole batch (batch norm's statistics) on one device
    whose types may carry a (trivial) sharding: it runs on the operands typed as replicated, and
    each result shaped like the first operand gets that operand's sharding back."""
    if not any(explicitly_sharded(op) for op in operands):
        return fn(*operands)
    mesh = next(jax.typeof(op).sharding.mesh for op in operands if explicitly_sharded(op))
    like = NamedSharding(mesh, jax.typeof(operands[0]).sharding.spec)
    replicated = NamedSharding(mesh, PartitionSpec())
    results = fn(*(jax.sharding.reshard(op, replicated) for op in operands))
    batch_shape = operands[0].shape
    return tuple(jax.sharding.reshard(r, like) if r.shape == batch_shape else r for r in results)


def _varying(x: jax.Array) -> frozenset:
    """The manual (`shard_map`) mesh axes over which `x`'s value varies."""
    return jax.typeof(x).manual_axis_type.varying


def vary_like(result: jax.Array, *operands: jax.Array) -> jax.Array:
    """`result` typed as varying over every manual axis one of `operands` varies over, as a
    JAX op's result is (a custom call's result is typed as varying over none)."""
    missing = frozenset().union(*map(_varying, operands)) - _varying(result)
    return jax.lax.pcast(result, tuple(sorted(missing)), to="varying") if missing else result


def cotangent_like(cotangent: jax.Array, primal: jax.Array) -> jax.Array:
    """A `custom_vjp` cotangent typed as its primal: summed over the manual axes along which
    only the cotangent varies (the transpose of the implicit broadcast of `primal`), made
    varying along those only the primal varies over."""
    extra = _varying(cotangent) - _varying(primal)
    if extra:
        cotangent = jax.lax.psum(cotangent, tuple(sorted(extra)))
    return vary_like(cotangent, primal)

"""Derivatives of every order, in both modes, for ops whose kernels give only a value and its
first derivative: the zoo's native kernels.

A `jax.custom_vjp` over such kernels gives one reverse pass and nothing else: `jax.jvp`,
`jax.jacfwd`, `jax.hessian` and a `grad` of a `grad` (meta-learning, gradient penalties) all
fail on it. `differentiable(forward, reference, cotangent=..., tangent=...)` builds the op
instead from two linear maps, JAX primitives that transpose into each other (as
`jax.custom_derivatives.linear_call`'s do, which gives no derivative in its residuals):

- its value, with any residuals its kernels keep for the gradient: `forward`, a
  `jax.custom_jvp` whose rule calls the op again, so that a derivative of the rule is the op's;
- the tangent map `t -> J t` (forward mode): `tangent`, by default `reference`'s (`jax.jvp`),
  or a bilinear op's own value with one primal at a time replaced by its tangent;
- its transpose `c -> J^T c` (reverse mode): `cotangent`, the kernels' backward. `jax.grad`
  linearises through the tangent map and transposes it into this one, so a train step runs
  the kernels a `custom_vjp` would run, and nothing else;
- each derivative of the two maps themselves (second and higher order): `reference`'s, the op
  written in JAX's own ops, differentiated by JAX. The maps depend on the primals through
  `reference` alone there; the residuals are the kernels' own view of the primals. A
  `bilinear` op (a convolution) is the exception: its maps are bilinear too, and every
  derivative of theirs is a sum of the two maps, on the kernels.

A map is traced where it is lowered, in its operands' context (sharding in their types,
`shard_map`'s manual axes); its result types are known without tracing it (an output's
tangent is typed as the output, a primal's cotangent as the primal), so a train step traces
each kernel direction once. Under `jax.vmap` a map runs per example (`jax.lax.map`), as the
kernels' FFI calls do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import zero_from_primal
from jax.extend import core

from zoo import jax_internals  # a primitive's rules: JAX has no public API for them

Arrays = tuple[jax.Array, ...]
Forward = Callable[..., tuple[Arrays, Arrays]]
Tangent = Callable[[Arrays, Arrays, Arrays], Arrays]
Cotangent = Callable[[Arrays, Arrays, tuple[jax.Array | None, ...]], Arrays]


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: one per traced call
class _Op:
    name: str
    forward: Forward
    reference: Callable[..., Arrays]
    tangent: Tangent | None
    cotangent: Cotangent
    primal_avals: tuple[Any, ...]
    residual_count: int
    output_avals: tuple[Any, ...]
    bilinear: bool

    def __repr__(self) -> str:  # how a jaxpr shows it
        return self.name

    def split(self, operands: Sequence[Any]) -> tuple[tuple, tuple, tuple]:
        """(primals, residuals, the rest: tangents or cotangents) of a map's operands."""
        p = len(self.primal_avals)
        r = p + self.residual_count
        return tuple(operands[:p]), tuple(operands[p:r]), tuple(operands[r:])

    def tangents(self, *operands: jax.Array) -> Arrays:
        """The tangent map, on the kernels where the op has a `tangent` or is bilinear."""
        primals, residuals, tangents = self.split(operands)
        if self.tangent is not None:
            return tuple(self.tangent(primals, residuals, tangents))
        if self.bilinear:  # J(a, b)(da, db) = f(da, b) + f(a, db)
            terms = [
                self.forward(*primals[:i], t, *primals[i + 1 :])[0] for i, t in enumerate(tangents)
            ]
            return tuple(sum(term) for term in zip(*terms, strict=True))
        return self.reference_tangents(primals, tangents)

    def cotangents(self, *operands: jax.Array, present: tuple[bool, ...]) -> Arrays:
        """The cotangent map, on the kernels; `present`: which outputs' cotangents are given."""
        primals, residuals, given = self.split(operands)
        return tuple(self.cotangent(primals, residuals, _spread(given, present)))

    def reference_tangents(self, primals: Arrays, tangents: Arrays) -> Arrays:
        return tuple(jax.jvp(self.reference, tuple(primals), tuple(tangents))[1])

    def reference_cotangents(
        self, primals: Arrays, given: Arrays, present: tuple[bool, ...]
    ) -> Arrays:
        cotangents = tuple(
            jax_internals.zeros_like_aval(aval) if c is None else c
            for c, aval in zip(_spread(given, present), self.output_avals, strict=True)
        )
        return tuple(jax.vjp(self.reference, *primals)[1](cotangents))


def _present(values: Sequence[Any], present: Sequence[bool]) -> tuple:
    return tuple(v for v, p in zip(values, present, strict=True) if p)


def _spread(values: Sequence[jax.Array], present: Sequence[bool]) -> tuple:
    """`values` at the `present` positions, None elsewhere."""
    values = iter(values)
    return tuple(next(values) if p else None for p in present)


# The tangent map: operands (*primals, *residuals, *tangents), results the outputs' tangents.
tangent_p = core.Primitive("zoo_tangent")
# Its transpose: operands (*primals, *residuals, *the outputs' nonzero cotangents), results the
# primals' cotangents; `present` says which outputs' cotangents are operands.
cotangent_p = core.Primitive("zoo_cotangent")


def _tangents(*operands: jax.Array, op: _Op) -> Arrays:
    return op.tangents(*operands)


def _cotangents(*operands: jax.Array, op: _Op, present: tuple[bool, ...]) -> Arrays:
    return op.cotangents(*operands, present=present)


for _primitive, _evaluate, _result_avals in (
    (tangent_p, _tangents, lambda op: op.output_avals),
    (cotangent_p, _cotangents, lambda op: op.primal_avals),
):
    _primitive.multiple_results = True
    _primitive.def_impl(_evaluate)
    _primitive.def_abstract_eval(
        lambda *_, op, _result_avals=_result_avals, **__: [
            aval.to_tangent_aval() for aval in _result_avals(op)
        ]
    )
    jax_internals.register_lowering(
        _primitive, jax_internals.lower_fun(_evaluate, multiple_results=True)
    )


def _for_undefined(values: Sequence[Any], operands: Sequence[Any]) -> list:
    """A transpose's results: `values` where the operand is linear, None where it is known."""
    return [
        v if jax_internals.is_undefined_primal(x) else None
        for v, x in zip(values, operands, strict=True)
    ]


def _in_primals(op: _Op, operands: Sequence[Any]) -> bool:
    """Whether a bilinear op's map is linear in its primals here (derivatives of its maps)."""
    return any(map(jax_internals.is_undefined_primal, op.split(operands)[0]))


def _tangent_transpose(cotangents, *operands, op: _Op):
    primals, residuals, tangents = op.split(operands)
    present = tuple(type(ct) is not jax_internals.Zero for ct in cotangents)
    if not any(present):
        return [None] * len(operands)
    given = _present(cotangents, present)
    if op.bilinear and _in_primals(op, operands):  # J(p; t) = J(t; p) for a bilinear op
        d_primals = cotangent_p.bind(*tangents, *given, op=op, present=present)
        return [*_for_undefined(d_primals, primals), *(None for _ in tangents)]
    d_in = cotangent_p.bind(*primals, *residuals, *given, op=op, present=present)
    return [*(None for _ in (*primals, *residuals)), *_for_undefined(d_in, tangents)]


def _cotangent_transpose(cotangents, *operands, op: _Op, present: tuple[bool, ...]):
    primals, residuals, given = op.split(operands)
    if all(type(ct) is jax_internals.Zero for ct in cotangents):
        return [None] * len(operands)
    cotangents = [jax_internals.instantiate_zeros(ct) for ct in cotangents]
    if op.bilinear and _in_primals(op, operands):  # C(.; g) transposes into C(.; g)
        d_primals = cotangent_p.bind(*cotangents, *given, op=op, present=present)
        return [*_for_undefined(d_primals, primals), *(None for _ in given)]
    d_given = _present(tangent_p.bind(*primals, *residuals, *cotangents, op=op), present)
    return [*(None for _ in (*primals, *residuals)), *_for_undefined(d_given, given)]


jax_internals.primitive_transposes[tangent_p] = _tangent_transpose
jax_internals.primitive_transposes[cotangent_p] = _cotangent_transpose


def _bilinear_jvp(primitive: core.Primitive, operands, operand_tangents, **params):
    """The derivative of a bilinear op's map, itself bilinear in (primals, the rest): the map
    of (the primals, the rest's tangents) plus that of (the primals' tangents, the rest)."""
    primals, _, rest = params["op"].split(operands)
    d_primals, _, d_rest = params["op"].split(operand_tangents)
    outputs = primitive.bind(*operands, **params)
    terms = []
    for first, second in ((primals, d_rest), (d_primals, rest)):
        if any(type(t) is not jax_internals.Zero for t in (*first, *second)):
            terms.append(
                primitive.bind(*map(jax_internals.instantiate_zeros, (*first, *second)), **params)
            )
    return outputs, [sum(term) for term in zip(*terms, strict=True)]


def _tangent_jvp(operands, operand_tangents, *, op: _Op):
    if op.bilinear:
        return _bilinear_jvp(tangent_p, operands, operand_tangents, op=op)
    primals, _, tangents = op.split(operands)
    d_primals, _, d_tangents = op.split(
        [jax_internals.instantiate_zeros(t) for t in operand_tangents]
    )
    outputs = tangent_p.bind(*operands, op=op)
    _, d_outputs = jax.jvp(op.reference_tangents, (primals, tangents), (d_primals, d_tangents))
    return outputs, list(d_outputs)


def _cotangent_jvp(operands, operand_tangents, *, op: _Op, present: tuple[bool, ...]):
    if op.bilinear:
        return _bilinear_jvp(cotangent_p, operands, operand_tangents, op=op, present=present)
    primals, _, given = op.split(operands)
    d_primals, _, d_given = op.split([jax_internals.instantiate_zeros(t) for t in operand_tangents])
    outputs = cotangent_p.bind(*operands, op=op, present=present)
    _, d_outputs = jax.jvp(
        lambda p, g: op.reference_cotangents(p, g, present), (primals, given), (d_primals, d_given)
    )
    return outputs, list(d_outputs)


jax_internals.primitive_jvps[tangent_p] = _tangent_jvp
jax_internals.primitive_jvps[cotangent_p] = _cotangent_jvp


def _per_example(primitive: core.Primitive):
    """`primitive`'s batching rule: once per example of the mapped axis (`jax.lax.map`)."""

    def rule(operands, dims, **params):
        mapped = [i for i, d in enumerate(dims) if d is not None]

        def one(examples):
            operands_ = list(operands)
            for i, example in zip(mapped, examples, strict=True):
                operands_[i] = example
            return primitive.bind(*operands_, **params)

        outputs = jax.lax.map(one, [jnp.moveaxis(operands[i], dims[i], 0) for i in mapped])
        return list(outputs), [0] * len(outputs)

    return rule


jax_internals.primitive_batchers[tangent_p] = _per_example(tangent_p)
jax_internals.primitive_batchers[cotangent_p] = _per_example(cotangent_p)


def differentiable(
    forward: Forward,
    reference: Callable[..., Arrays],
    *,
    cotangent: Cotangent,
    tangent: Tangent | None = None,
    bilinear: bool = False,
    name: str,
) -> Callable[..., Arrays]:
    """The op `reference` computes, `primals -> outputs` (a tuple of arrays), differentiable to
    any order in both modes (see module):

    - `forward(*primals) -> (outputs, residuals)`: its value, on the kernels;
    - `cotangent(primals, residuals, cotangents) -> primal cotangents`: the reverse-mode
      derivative, on the kernels; an output's cotangent is None where it is zero; each result
      typed as its primal (`zoo.ops.sharding.cotangent_like`);
    - `tangent(primals, residuals, tangents) -> output tangents`: the forward-mode
      derivative, by default `reference`'s;
    - `bilinear`: the op is linear in each primal (a convolution, a matrix product) and keeps
      no residuals; its tangent map is then `forward`'s sum over the primals, each replaced
      in turn by its tangent, its maps are bilinear too, and every derivative of theirs is a
      sum of the two maps on the kernels (`reference` is not differentiated);
    - `name`: the op's, as jaxprs show it.
    """

    def evaluate(*primals):
        return forward(*primals)

    evaluate.__name__ = evaluate.__qualname__ = name
    evaluate = jax.custom_jvp(evaluate)

    @evaluate.defjvp
    def _(primals, tangents):
        outputs, residuals = evaluate(*primals)
        op = _Op(
            name,
            forward,
            reference,
            tangent,
            cotangent,
            tuple(map(jax.typeof, primals)),
            len(residuals),
            tuple(map(jax.typeof, outputs)),
            bilinear,
        )
        d_outputs = tangent_p.bind(*primals, *residuals, *tangents, op=op)
        return (outputs, residuals), (tuple(d_outputs), zero_from_primal(residuals))

    return lambda *primals: tuple(evaluate(*primals)[0])

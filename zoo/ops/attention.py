"""Scaled dot-product attention: `jax.nn.dot_product_attention`'s op, on each backend's kernel.

    softmax(Q K^T / sqrt(d)) V

over (batch, length, heads, head size) queries, keys and values, as `jax.nn.dot_product_attention`
takes them, chosen inside the jitted function per backend:

- CUDA GPUs: cuDNN's fused (flash) attention, `implementation="cudnn"`, wherever cuDNN takes the
  call forward and backward (bf16 or fp16, a head size it supports, a GPU and cuDNN recent
  enough: asked by tracing it, `_cudnn_takes`); JAX's own default (`implementation=None`) is
  XLA's ops, also on GPUs.
- CPU: `reference_attention`, the same two matmuls and float32 softmax as JAX's XLA
  implementation, written as einsums that XLA:CPU runs faster (bench/README.md, "Attention on
  CPU").
- anything else, or under `zoo.ops.portable()`: `jax.nn.dot_product_attention` on XLA's ops.

The logits and the softmax are float32 for bf16 inputs too, the probabilities rounded to the
inputs' dtype before the second matmul, as in `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.ops.backend import on_cpu, tracing_portably


def reference_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """softmax(Q K^T / sqrt(d)) V, one softmax per query and head; inputs (B, T, N, H)."""
    scale = np.float32(1 / np.sqrt(query.shape[-1]))
    logits = jnp.einsum("bqnh,bknh->bnqk", query, key, preferred_element_type=jnp.float32)
    probabilities = jax.nn.softmax(logits * scale, axis=-1).astype(value.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probabilities, value)


def _cudnn_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")


@functools.cache
def _has_cuda() -> bool:
    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:  # no CUDA backend in this process
        return False


@functools.lru_cache(maxsize=64)
def _cudnn_takes_specs(specs: tuple[tuple[tuple[int, ...], str], ...]) -> bool:
    operands = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs]

    def loss(*qkv: jax.Array) -> jax.Array:
        return jnp.sum(_cudnn_attention(*qkv).astype(jnp.float32))

    try:
        jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), *operands)
    # JAX's cuDNN path refuses what cuDNN cannot run while it traces, with these exceptions
    # (an unsupported dtype or head size, an old GPU or cuDNN); XLA's ops run it instead.
    except (ValueError, NotImplementedError, RuntimeError, TypeError):
        return False
    return True


def _cudnn_takes(query: jax.Array, key: jax.Array, value: jax.Array) -> bool:
    """Whether cuDNN's fused attention runs these operands forward and backward here."""
    if not _has_cuda():
        return False
    return _cudnn_takes_specs(tuple((t.shape, str(t.dtype)) for t in (query, key, value)))


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """`jax.nn.dot_product_attention(query, key, value)`: self- or cross-attention without a
    mask or bias; (batch, length, heads, head size) in, the same shape out (see the module)."""
    if not tracing_portably() and _cudnn_takes(query, key, value):
        return lax.platform_dependent(
            query,
            key,
            value,
            cpu=reference_attention,
            cuda=_cudnn_attention,
            default=jax.nn.dot_product_attention,
        )
    return on_cpu(reference_attention, jax.nn.dot_product_attention, query, key, value)

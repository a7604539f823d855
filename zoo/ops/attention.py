"""Scaled dot-product attention: `jax.nn.dot_product_attention`'s op, with XLA:CPU's faster form.

    softmax(Q K^T / sqrt(d)) V

over (batch, length, heads, head size) queries, keys and values, as `jax.nn.dot_product_attention`
takes them. On GPUs and TPUs it is `jax.nn.dot_product_attention` itself, which runs cuDNN's
fused kernel where cuDNN takes the shapes and dtype (bf16 and fp16) and XLA's ops elsewhere. On
CPU it is `reference_attention`: the same two matmuls and float32 softmax as that function's XLA
implementation, written as einsums that XLA:CPU runs faster (bench/README.md, "Attention on
CPU"). The logits and the softmax are float32 for bf16 inputs too, the probabilities rounded to
the inputs' dtype before the second matmul, as in `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zoo.ops.backend import on_cpu


def reference_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """softmax(Q K^T / sqrt(d)) V, one softmax per query and head; inputs (B, T, N, H)."""
    scale = np.float32(1 / np.sqrt(query.shape[-1]))
    logits = jnp.einsum("bqnh,bknh->bnqk", query, key, preferred_element_type=jnp.float32)
    probabilities = jax.nn.softmax(logits * scale, axis=-1).astype(value.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probabilities, value)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    """`jax.nn.dot_product_attention(query, key, value)`: self- or cross-attention without a
    mask or bias; (batch, length, heads, head size) in, the same shape out (see the module)."""
    return on_cpu(reference_attention, jax.nn.dot_product_attention, query, key, value)

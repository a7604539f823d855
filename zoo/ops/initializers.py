"""`jax.nn.initializers.variance_scaling` and its named cases, drawn in fixed-size chunks.

The values are bit-for-bit those of JAX's initializers for the same key. With threefry's
partitionable counters (JAX's default) the bits of element `i` of a draw depend only on the key
and on `i`, its row-major index, so a draw of any shape is the concatenation of fixed-size
chunks drawn at counters `0, c, 2c, ...`, reshaped (`c` is `CHUNK` or `SMALL_CHUNK`, below).
One compiled program per chunk size, distribution and dtype then serves every kernel of every
model, where JAX compiles a draw for each distinct kernel shape, which is most of an eager
`init` of a deep network (bench/README.md, "Initializers"). Keys of another implementation,
other counter schemes and traced keys (an `init` under `jit`, which compiles one program
anyway) take JAX's own draw, flat.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np
from jax import lax

# A standard normal truncated to [-2, 2] has this standard deviation (JAX's constant).
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978
# Where XLA:CPU hands elementwise fusions to YNNPACK (the `eltwise` fusion kind, a user's to
# ask for in XLA_FLAGS), it does so from YNN_FROM elements on, and YNNPACK's erf_inv rounds
# differently from XLA's own loops (bench/README.md, "Initializers"). So a draw of that size or
# more is drawn in chunks of CHUNK elements, computed as JAX's own draw of it is, and a smaller
# one in chunks of SMALL_CHUNK, computed by XLA's loops as JAX's is.
YNN_FROM = 4096
CHUNK = 1 << 16
SMALL_CHUNK = 1024
_BITS_DTYPES = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}


def _threefry_bits_from(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    """JAX's partitionable threefry bits for elements `offset, offset + 1, ...` of a draw,
    where `key` is `(k1, k2, offset)`: the counters' high word is 0 (a draw under 2**32)."""
    counters = (key[2] + lax.iota(jnp.uint32, math.prod(shape))).reshape(shape)
    bits1, bits2 = jax_random.threefry2x32_p.bind(
        key[0], key[1], jnp.zeros_like(counters), counters
    )
    if bit_width == 64:  # float64 (x64 mode): JAX joins the two words instead of xor-ing them
        return (bits1.astype(jnp.uint64) << 32) | bits2.astype(jnp.uint64)
    return (bits1 ^ bits2).astype(_BITS_DTYPES[bit_width])


def _draws_bits_only(*_: Any) -> jax.Array:
    raise NotImplementedError("an offset threefry key only draws bits")


# A key type that draws from the middle of a threefry stream; only `_chunk` makes these keys.
_OFFSET_THREEFRY = jax_random.define_prng_impl(
    key_shape=(3,),
    seed=_draws_bits_only,
    split=_draws_bits_only,
    random_bits=_threefry_bits_from,
    fold_in=_draws_bits_only,
    name="zoo_offset_threefry2x32",
    tag="zoo_offset_fry",
)


def _sample(key: jax.Array, shape: tuple[int, ...], dtype: Any, distribution: str) -> jax.Array:
    """The unit draw each variance-scaling distribution scales, exactly as JAX's makes it."""
    if distribution == "truncated_normal":
        return jax.random.truncated_normal(key, -2, 2, shape, dtype)
    if distribution == "normal":
        return jax.random.normal(key, shape, dtype)
    return jax.random.uniform(key, shape, dtype, -1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _chunk(
    key_data: jax.Array, offset: jax.Array, size: int, dtype: Any, distribution: str
) -> jax.Array:
    key = jax.random.wrap_key_data(jnp.append(key_data, offset), impl=_OFFSET_THREEFRY)
    return _sample(key, (size,), dtype, distribution)


def _threefry_key_data(key: jax.Array) -> jax.Array | None:
    """The `(k1, k2)` of a concrete partitionable threefry key, else None."""
    if isinstance(key, jax.core.Tracer) or not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    # A raw uint32 key (`jax.random.PRNGKey`) belongs to the default implementation.
    threefry = jax.config.jax_default_prng_impl == "threefry2x32"
    return key if threefry and key.shape == (2,) and key.dtype == jnp.uint32 else None


def _chunked_draw(key: jax.Array, size: int, dtype: Any, distribution: str) -> np.ndarray | None:
    """`_sample(key, (size,), dtype, distribution)` chunk by chunk, or None where the chunks
    would not be JAX's values (see the module docstring)."""
    key_data = _threefry_key_data(key)
    if key_data is None or size >= 2**32:
        return None
    chunk_size = CHUNK if size >= YNN_FROM else SMALL_CHUNK
    flat = np.empty(size, dtype)
    for start in range(0, size, chunk_size):
        chunk = _chunk(key_data, np.uint32(start), chunk_size, jnp.dtype(dtype), distribution)
        flat[start : start + chunk_size] = np.asarray(chunk)[: size - start]
    return flat


def _size(shape: tuple[int, ...], axes: int | Sequence[int]) -> int:
    return shape[axes] if isinstance(axes, int) else math.prod(shape[i] for i in axes)


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
) -> Any:
    """`jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis, out_axis)`
    for real dtypes, with the same values (see the module docstring)."""
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be fan_in, fan_out or fan_avg, not {mode!r}")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(f"variance_scaling: unknown distribution {distribution!r}")

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        if len(shape) < 2:
            raise ValueError(f"variance_scaling: needs at least 2 dimensions, got {shape}")
        in_size, out_size = _size(shape, in_axis), _size(shape, out_axis)
        receptive_field = math.prod(shape) / in_size / out_size
        fans = {
            "fan_in": in_size * receptive_field,
            "fan_out": out_size * receptive_field,
            "fan_avg": (in_size + out_size) * receptive_field / 2,
        }
        variance = jnp.array(scale / fans[mode], dtype=dtype)
        if distribution == "truncated_normal":
            factor = jnp.sqrt(variance) / jnp.array(_TRUNCATED_NORMAL_STDDEV, dtype)
        elif distribution == "normal":
            factor = jnp.sqrt(variance)
        else:
            factor = jnp.sqrt(3 * variance)
        return _scaled_draw(key, shape, dtype, distribution, factor)

    return init


def normal(stddev: float = 1e-2) -> Any:
    """`jax.nn.initializers.normal(stddev)`, with the same values (see the module docstring)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        return _scaled_draw(key, shape, dtype, "normal", jnp.array(stddev, dtype))

    return init


def _scaled_draw(
    key: jax.Array, shape: tuple[int, ...], dtype: Any, distribution: str, factor: jax.Array
) -> jax.Array:
    """`distribution`'s draw of `shape` for `key`, times `factor`."""
    size = math.prod(shape)
    flat = _chunked_draw(key, size, dtype, distribution)
    if flat is None:  # drawn flat all the same: XLA:CPU compiles a 4-D draw more slowly
        return _sample(key, (size,), dtype, distribution).reshape(shape) * factor
    # NumPy rounds the product as XLA does (one IEEE multiply), without a compile per shape.
    values = (flat * np.asarray(factor)).reshape(shape)
    return jax.device_put(values, key.sharding if key.committed else None)  # as JAX places it


def lecun_normal(in_axis: int | Sequence[int] = -2, out_axis: int | Sequence[int] = -1) -> Any:
    """`jax.nn.initializers.lecun_normal` (LeCun et al. 1998), drawn in chunks."""
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis)


def truncated_normal(stddev: float) -> Any:
    """`jax.nn.initializers.truncated_normal(stddev)`: a standard normal truncated to [-2, 2],
    times `stddev` (no correction of the standard deviation), drawn in chunks (the same values)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        return _scaled_draw(key, shape, dtype, "truncated_normal", jnp.array(stddev, dtype))

    return init

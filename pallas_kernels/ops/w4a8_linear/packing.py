"""int4 weight packing: two signed 4-bit values per byte along K (low nibble = even k).

Layout contract (shared with ``vidq_jax.quant``): for ``v`` int8 in ``[-8, 7]`` of shape
``(..., K)`` with even K, ``packed[..., j] = (v[..., 2j] & 0xF) | ((v[..., 2j+1] & 0xF) << 4)``
as uint8, shape ``(..., K // 2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def pack_int4(v: jax.Array) -> jax.Array:
    """Pack int values in ``[-8, 7]`` ``(..., K)`` into uint8 ``(..., K // 2)``."""
    if v.shape[-1] % 2:
        raise ValueError(f"K must be even to pack int4, got shape {v.shape}")
    u = lax.bitcast_convert_type(v.astype(jnp.int8), jnp.uint8)
    lo = u[..., 0::2] & jnp.uint8(0xF)
    hi = u[..., 1::2] & jnp.uint8(0xF)
    return lo | (hi << jnp.uint8(4))


def unpack_nibbles(packed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sign-extended low (even k) and high (odd k) nibbles as int8, each ``(..., K // 2)``.

    Works on uint8 or int8 (bit-identical) input; used by the reference and inside kernels.
    """
    s = packed if packed.dtype == jnp.int8 else lax.bitcast_convert_type(packed, jnp.int8)
    four = jnp.int8(4)
    lo = lax.shift_right_arithmetic(lax.shift_left(s, four), four)
    hi = lax.shift_right_arithmetic(s, four)
    return lo, hi


def unpack_int4(packed: jax.Array) -> jax.Array:
    """Inverse of :func:`pack_int4`: uint8 ``(..., K // 2)`` -> int8 ``(..., K)`` in [-8, 7]."""
    lo, hi = unpack_nibbles(packed)
    return jnp.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def deinterleave_k(xq: jax.Array) -> jax.Array:
    """Reorder K as ``[even k..., odd k...]`` so that the nibble planes meet contiguous A tiles."""
    return jnp.concatenate([xq[..., 0::2], xq[..., 1::2]], axis=-1)

"""Private int4 packing helpers (two signed nibbles per byte).

Layout (shared contract with ``pallas_kernels.pack_int4/unpack_int4``; this private copy exists so
``vidq_jax.quant`` works before/without the kernel package and is tested against the same spec):

* values ``v`` int8 in ``[-8, 7]``, shape ``(N, K)`` with ``K`` even;
* packed ``uint8 (N, K // 2)``; byte ``j`` of row ``n`` is
  ``(v[n, 2j] & 0xF) | ((v[n, 2j+1] & 0xF) << 4)`` (even column in the low nibble).

Any leading shape is allowed; only the last axis is packed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pack_int4(values: jax.Array) -> jax.Array:
    """int8 ``(..., K)`` in ``[-8, 7]`` → uint8 ``(..., K // 2)`` (layout in the module docstring)."""
    values = jnp.asarray(values)
    k = values.shape[-1]
    if k % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got K={k}")
    v = values.astype(jnp.int32).reshape(values.shape[:-1] + (k // 2, 2))
    lo = v[..., 0] & 0xF
    hi = v[..., 1] & 0xF
    return (lo | (hi << 4)).astype(jnp.uint8)


def unpack_int4(packed: jax.Array) -> jax.Array:
    """uint8 ``(..., K // 2)`` → int8 ``(..., K)`` (sign-extending each nibble)."""
    p = jnp.asarray(packed).astype(jnp.int32)
    lo = p & 0xF
    hi = (p >> 4) & 0xF
    lo = jnp.where(lo >= 8, lo - 16, lo)
    hi = jnp.where(hi >= 8, hi - 16, hi)
    out = jnp.stack([lo, hi], axis=-1)
    return out.reshape(p.shape[:-1] + (2 * p.shape[-1],)).astype(jnp.int8)

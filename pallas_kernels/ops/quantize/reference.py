"""Plain-jnp definition of dynamic per-token symmetric int8 quantization (the semantics contract).

For each row ``t`` of ``x`` (last axis = K):

* ``scale_t = max_k |x[t, k]| / 127`` computed in float32; an all-zero row gets ``scale_t = 1``
  (so it quantizes to zeros and dequantizes to exact zeros, never NaN);
* ``q[t, k] = clip(round_half_even(x[t, k] / scale_t), -127, 127)`` as int8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

QMAX = 127.0


def row_scale(x: jax.Array) -> jax.Array:
    """Per-row symmetric scale ``max|x|/127`` in float32, shape ``(..., 1)``; zero rows give 1."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True)
    scale = amax / QMAX
    return jnp.where(scale > 0, scale, jnp.float32(1.0))


def quantize_with_scale(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``clip(round(x / scale), -127, 127)`` as int8 (``scale`` broadcasts against ``x``)."""
    q = jnp.round(x.astype(jnp.float32) / scale)
    return jnp.clip(q, -QMAX, QMAX).astype(jnp.int8)


def quantize_per_token_ref(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token quantization ``x (..., K)`` -> ``(int8 (..., K), f32 scale (..., 1))``."""
    scale = row_scale(x)
    return quantize_with_scale(x, scale), scale


def dequantize_per_token_ref(q: jax.Array, scale: jax.Array) -> jax.Array:
    return q.astype(jnp.float32) * scale

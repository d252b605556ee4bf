"""Attention across frames, the semantics the kernels follow.

``q, k, v (B, T, S, H, D)``: frame-major video tokens (``T`` frames of ``S`` positions, ``H`` heads of
width ``D``). Each position attends over its own ``T`` frames, per head:

    logits[b, s, h, t, u] = Σ_d q[b, t, s, h, d] · k[b, u, s, h, d] / √D       (float32)
    out[b, t, s, h, :]    = Σ_u softmax_u(logits)[b, s, h, t, u] · v[b, u, s, h, :]

with the softmax in float32 and its weights cast to the input dtype before the second product
(as the original models' non-flash attention). This is the temporal attention of Open-Sora STDiT
and STDiT3, written in the tokens' own layout so that nothing is transposed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def frame_attention_ref(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """``(B, T, S, H, D)`` ×3 → ``(B, T, S, H, D)`` in ``q.dtype``."""
    if not (q.shape == k.shape == v.shape and q.ndim == 5):
        raise ValueError(f"q, k, v must share one (B, T, S, H, D) shape; got {q.shape}, {k.shape}, {v.shape}")
    logits = jnp.einsum("btshd,bushd->bshtu", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (1.0 / math.sqrt(q.shape[-1])), axis=-1).astype(q.dtype)
    return jnp.einsum("bshtu,bushd->btshd", weights, v)

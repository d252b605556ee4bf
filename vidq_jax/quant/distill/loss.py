"""Temporal maintenance distillation loss (Q-VDiT §10.2): output reconstruction + frame-relation KL.

For model outputs ``S`` of the quantized (``pred``) and the float (``target``) model::

    L = mean (S_FP − S_Q)²  +  γ · KL,        KL = mean_{b,i,j} D^FP_bij (log D^FP_bij − log D^Q_bij)
    D_bi = softmax_j cos(S_b,frame i, S_b,frame j)

``frame i`` is the i-th frame of a video output ``(B, T, H, W, C)`` flattened (every spatial position
and channel). Reductions follow the released code (``lp_loss(reduction='all')`` = element mean,
``F.kl_div(reduction='mean')`` = mean over the ``B·T·T`` entries), the scale on which γ = 100 was chosen;
the paper writes the sum over frames. Unlike the released code, whose ``(B, C, T, H, W) → (B, T, -1)``
reshape without a permute mixes channels into its "frames", the frames here are the real frames.
Image outputs (or a single frame) have no frame relation: KL = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAMMA = 100.0
"""The weight of the frame-relation term (the paper: robust over 50–200)."""


def frame_similarity(s: jax.Array) -> jax.Array:
    """Cosine similarity of every pair of frames of ``s (B, T, ...)``: ``(B, T, T)`` float32 (frames
    normalised with PyTorch ``F.normalize``'s ``eps = 1e-12``)."""
    f = s.reshape(s.shape[0], s.shape[1], -1).astype(jnp.float32)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return jnp.einsum("btd,bud->btu", f, f, precision=jax.lax.Precision.HIGHEST)


def temporal_kl(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``mean_{b,i,j} D^FP (log D^FP − log D^Q)`` of the frame-relation distributions (module docstring)."""
    log_q = jax.nn.log_softmax(frame_similarity(pred), axis=-1)
    log_p = jax.nn.log_softmax(frame_similarity(jax.lax.stop_gradient(target)), axis=-1)
    return jnp.mean(jnp.exp(log_p) * (log_p - log_q))


def tmd_loss(pred: jax.Array, target: jax.Array, gamma: float = GAMMA) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss, {"mse": ..., "kl": ...})`` of the quantized output ``pred`` against the float ``target``."""
    pred = pred.astype(jnp.float32)
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    mse = jnp.mean(jnp.square(pred - target))
    video = pred.ndim == 5 and pred.shape[1] > 1
    kl = temporal_kl(pred, target) if video else jnp.zeros((), jnp.float32)
    return mse + gamma * kl, {"mse": mse, "kl": kl}


__all__ = ["GAMMA", "frame_similarity", "temporal_kl", "tmd_loss"]

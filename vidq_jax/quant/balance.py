"""Static-dynamic channel balancing math (smoothing scales, rotation signs, incoherence).

Convention used by the record (:class:`~vidq_jax.quant.record.QuantizedWeight`): a smoothing vector
``s (K,)`` is applied as ``x' = x / s`` and ``W' = W · diag(s)`` (SmoothQuant). With SmoothQuant
migration strength ``α``::

    s_c = A_c^α / (max_n |W_c,n|)^(1-α)                                   (smooth_scale)

ViDiT-Q's new code writes the same transform as a multiplier ``m = 1/s`` (``x·m``, ``W/m``)::

    m_c = (max_n |W_c,n|)^a / A_c^(1-a)      with  a = 1 - α               (viditq_multiplier)

``A_c`` is the calibrated absmax of input channel ``c`` (max over all rows of all calibration
calls), ``max_n |W_c,n|`` the absmax of the weight's input channel ``c`` (row ``c`` of the Flax
``kernel (K, N)``). Zero guards: a channel whose activation or weight absmax is 0 (or non-positive)
gets ``s_c = 1`` (nothing to balance), and ``s`` is clipped to ``[1e-5, 1e5]``.

Incoherence of a token ``x (K,)`` (ViDiT-Q's channel-imbalance metric): ``max_c |x_c| / mean_c |x_c|``
(``= 1`` for a perfectly flat token, up to ``K`` for a one-hot token; an all-zero token gives 1).
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.hadamard import random_signs

SMOOTH_MIN, SMOOTH_MAX = 1e-5, 1e5


def channel_absmax(x: jax.Array) -> jax.Array:
    """Per-input-channel ``max |x|`` over every axis but the last: ``(..., K) -> (K,)`` float32."""
    x = jnp.asarray(x)
    return jnp.max(jnp.abs(x.astype(jnp.float32)).reshape(-1, x.shape[-1]), axis=0)


def weight_channel_absmax(kernel: jax.Array) -> jax.Array:
    """``max_n |W_c,n|`` for a Flax ``kernel (K, N)`` → ``(K,)`` float32."""
    return jnp.max(jnp.abs(jnp.asarray(kernel, jnp.float32)), axis=1)


def smooth_scale(act_absmax: jax.Array, w_absmax: jax.Array, alpha: float) -> jax.Array:
    """SmoothQuant scale ``s = A^α / Wmax^(1-α)`` (apply ``x/s``, ``W·s``), guarded, float32 ``(K,)``."""
    a = jnp.asarray(act_absmax, jnp.float32)
    w = jnp.asarray(w_absmax, jnp.float32)
    ok = (a > 0) & (w > 0) & jnp.isfinite(a) & jnp.isfinite(w)
    a_safe = jnp.where(ok, a, 1.0)
    w_safe = jnp.where(ok, w, 1.0)
    s = jnp.exp(alpha * jnp.log(a_safe) - (1.0 - alpha) * jnp.log(w_safe))
    return jnp.clip(jnp.where(ok, s, 1.0), SMOOTH_MIN, SMOOTH_MAX)


def viditq_multiplier(w_absmax: jax.Array, act_absmax: jax.Array, a: float) -> jax.Array:
    """ViDiT-Q's ``m = Wmax^a / A^(1-a)`` (apply ``x·m``, ``W/m``); equals ``1 / smooth_scale(α=1-a)``."""
    return 1.0 / smooth_scale(act_absmax, w_absmax, 1.0 - a)


def incoherence(x: jax.Array) -> jax.Array:
    """Per-token ``max|x| / mean|x|`` over the last axis, float32 ``x.shape[:-1]``; zero tokens → 1."""
    ax = jnp.abs(jnp.asarray(x).astype(jnp.float32))
    mx = jnp.max(ax, axis=-1)
    mean = jnp.mean(ax, axis=-1)
    return jnp.where(mean > 0, mx / jnp.where(mean > 0, mean, 1.0), 1.0)


def layer_key(seed: int, path: str) -> jax.Array:
    """Deterministic per-layer PRNG key: ``fold_in(key(seed), crc32(path))``."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)


def balance_for_layer(
    kernel: jax.Array,
    layer: LayerQuant,
    act_absmax: jax.Array | None = None,
    *,
    key: jax.Array | None = None,
    where: str = "",
) -> tuple[jax.Array | None, jax.Array | None]:
    """``(smooth (K,) | None, hadamard_signs (K,) | None)`` for one layer according to ``layer``.

    Smoothing needs ``act_absmax`` (calibrated channel absmax of the Dense input); rotation needs a
    ``key`` (e.g. :func:`layer_key`). Errors name ``where``.
    """
    k = kernel.shape[0]
    smooth = signs = None
    if layer.smooth_alpha is not None:
        if act_absmax is None:
            raise ValueError(f"layer {where or '?'}: smoothing (smooth_alpha={layer.smooth_alpha}) needs calibration statistics")
        if act_absmax.shape != (k,):
            raise ValueError(f"layer {where or '?'}: act_absmax shape {act_absmax.shape} != ({k},)")
        smooth = smooth_scale(act_absmax, weight_channel_absmax(kernel), float(layer.smooth_alpha))
    if layer.rotate:
        if key is None:
            raise ValueError(f"layer {where or '?'}: rotation needs a PRNG key for the Hadamard signs")
        signs = random_signs(key, k)
    return smooth, signs


__all__ = [
    "SMOOTH_MAX",
    "SMOOTH_MIN",
    "balance_for_layer",
    "channel_absmax",
    "incoherence",
    "layer_key",
    "smooth_scale",
    "viditq_multiplier",
    "weight_channel_absmax",
]

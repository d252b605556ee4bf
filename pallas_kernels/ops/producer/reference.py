"""Reference for the fused activation producer of a quantized linear.

``y = hook((LayerNorm_noaffine(x) * (1 + scale) + shift) * smooth)``, then per-token int8
quantization of ``y`` (:mod:`pallas_kernels.ops.quantize`). This is the ViDiT-Q online path
``x2 = (x * m) @ H`` with ``m`` the smoothing vector folded into the producer and ``H`` an
optional Hadamard/sign-flip transform (``hook``) applied along K.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels.ops.quantize.reference import quantize_per_token_ref

LN_EPS = 1e-6  # the LayerNorm epsilon of the PixArt / STDiT models


def layernorm_noaffine(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """float32 LayerNorm without affine parameters (statistics and result in float32; the same
    operations as the models' own no-affine LayerNorm applied to ``x`` cast to float32)."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + eps)


def producer_prequant_ref(
    x: jax.Array,
    shift: jax.Array | None = None,
    scale: jax.Array | None = None,
    smooth: jax.Array | None = None,
    hook: Callable[[jax.Array], jax.Array] | None = None,
    *,
    eps: float = LN_EPS,
) -> jax.Array:
    """Float32 activation right before quantization.

    ``x (B, L, K)``; ``shift``/``scale`` broadcast against it (``(B, 1, K)`` for adaLN-single);
    ``smooth (K,)`` multiplies channels; ``hook`` maps ``(..., K) -> (..., K)`` (Hadamard).
    """
    y = layernorm_noaffine(x, eps)
    if scale is not None:
        y = y * (1.0 + scale.astype(jnp.float32))
    if shift is not None:
        y = y + shift.astype(jnp.float32)
    if smooth is not None:
        y = y * smooth.astype(jnp.float32)
    if hook is not None:
        y = hook(y)
    return y


def fused_quantize_producer_ref(
    x: jax.Array,
    shift: jax.Array | None = None,
    scale: jax.Array | None = None,
    smooth: jax.Array | None = None,
    hook: Callable[[jax.Array], jax.Array] | None = None,
    *,
    eps: float = LN_EPS,
) -> tuple[jax.Array, jax.Array]:
    """``-> (int8 (..., K), float32 per-token scale (..., 1))``."""
    return quantize_per_token_ref(producer_prequant_ref(x, shift, scale, smooth, hook, eps=eps))

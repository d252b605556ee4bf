"""Plain-jnp W8A8 linear: per-token int8 activations x per-channel int8 weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.ops.int8_matmul.reference import int8_matmul_ref, scaled_epilogue_ref
from pallas_kernels.ops.quantize.reference import quantize_per_token_ref


def w8a8_linear_ref(
    x: jax.Array,
    qweight: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    activation: str | None = None,
) -> jax.Array:
    """``out = act((q(x) @ qweight^T) * scale_t[:, None] * w_scale[None, :] + bias)`` -> out_dtype."""
    xq, xs = quantize_per_token_ref(x)
    return scaled_epilogue_ref(int8_matmul_ref(xq, qweight), xs, w_scale, bias, out_dtype, activation)


def w8a8_linear_dequant_ref(
    x: jax.Array, qweight: jax.Array, w_scale: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """Float32 "fake-quant" form of the same function (dequantize both sides, f32 matmul)."""
    xq, xs = quantize_per_token_ref(x)
    xd = xq.astype(jnp.float32) * xs
    wd = qweight.astype(jnp.float32) * w_scale.astype(jnp.float32)[:, None]
    y = jnp.matmul(xd, wd.T, precision=jax.lax.Precision.HIGHEST)
    return y if bias is None else y + bias.astype(jnp.float32)

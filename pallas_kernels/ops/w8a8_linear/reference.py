"""Plain-jnp W8A8 linear: per-token int8 activations x per-channel int8 weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.ops.int8_matmul.reference import gemm_ref, scaled_epilogue_ref
from pallas_kernels.ops.quantize.reference import quantize_per_token_ref


def w8a8_linear_ref(
    x: jax.Array,
    qweight: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    activation: str | None = None,
    w_zero_point: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
) -> jax.Array:
    """``out = act((q(x) @ (qweight + w_zero_point)^T) * scale_t[:, None] * w_scale[None, :] + bias
    + u[:, None] * beta[None, :])``, then ``residual + gate · out``
    (``int8_matmul.reference.scaled_epilogue_ref``) -> out_dtype.
    ``q(x)``: per-token codes of ``qweight``'s dtype (int8, or FP8 e4m3: ``fp8_linear_ref``);
    ``rank1=(alpha, beta[, u_scale])``: ``u = u_scale · scale_t · (q(x) · alpha)``
    (``quantize.reference.token_dot``)."""
    zp = w_zero_point is not None
    alpha, beta, u_scale = (None, None, None) if rank1 is None else (*rank1, None)[:3]
    xq, xs, *rest = quantize_per_token_ref(x, row_sum=zp, dtype=qweight.dtype, alpha=alpha, u_scale=u_scale)
    return scaled_epilogue_ref(gemm_ref(xq, qweight), xs, w_scale, bias, out_dtype, activation,
                               w_zero=w_zero_point, x_row_sum=rest[0] if zp else None,
                               residual=residual, gate=gate, rank1=None if rank1 is None else (rest[-1], beta))


def w8a8_linear_dequant_ref(
    x: jax.Array, qweight: jax.Array, w_scale: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """Float32 "fake-quant" form of the same function (dequantize both sides, f32 matmul)."""
    xq, xs = quantize_per_token_ref(x)
    xd = xq.astype(jnp.float32) * xs
    wd = qweight.astype(jnp.float32) * w_scale.astype(jnp.float32)[:, None]
    y = jnp.matmul(xd, wd.T, precision=jax.lax.Precision.HIGHEST)
    return y if bias is None else y + bias.astype(jnp.float32)

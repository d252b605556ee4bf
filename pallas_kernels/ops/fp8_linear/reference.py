"""Plain-jnp FP8 W8A8 linear: dynamic per-token e4m3 activations x per-output-channel e4m3 weights.

* weights ``(N, K)``: ``w_scale[n] = max_k |W[n, k]| / 448``, ``W_q = e4m3(W / w_scale)``
  (:func:`quantize_fp8_weight_ref`: the per-row rule of ``ops.quantize.reference``);
* activations: the same rule per token (``quantize_per_token_ref(x, dtype=FP8)``);
* GEMM: ``lax.dot_general`` on the e4m3 operands with float32 accumulation (``int8_matmul.reference.gemm_ref``:
  XLA's own FP8 GEMM on Hopper), then the shared epilogue ``scaled_epilogue_ref`` (scales, bias,
  activation, gated residual) — no zero points (symmetric e4m3). That is ``w8a8_linear_ref`` on an e4m3
  weight: :func:`fp8_linear_ref` only checks the weight's dtype.
"""

from __future__ import annotations

import jax

from pallas_kernels.ops.quantize.reference import FP8, quantize_per_token_ref
from pallas_kernels.ops.w8a8_linear.reference import w8a8_linear_ref


def quantize_fp8_weight_ref(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``w (N, K)`` float -> ``(e4m3 (N, K), float32 scale (N,))``, one scale per output channel."""
    q, s = quantize_per_token_ref(w, dtype=FP8)
    return q, s[..., 0]


def check_fp8_weight(qweight: jax.Array) -> None:
    if qweight.dtype != FP8:
        raise TypeError(f"qweight must be float8_e4m3fn (FP8 e4m3 codes), got {qweight.dtype}")


def fp8_linear_ref(x: jax.Array, qweight: jax.Array, w_scale: jax.Array, bias: jax.Array | None = None,
                   **kw) -> jax.Array:
    """``residual + gate · act((e4m3(x) @ qweight^T) * scale_t[:, None] * w_scale[None, :] + bias)``
    (keywords of :func:`pallas_kernels.w8a8_linear_ref`: ``out_dtype``, ``activation``, ``residual``, ``gate``)."""
    check_fp8_weight(qweight)
    return w8a8_linear_ref(x, qweight, w_scale, bias, **kw)


__all__ = ["FP8", "check_fp8_weight", "fp8_linear_ref", "quantize_fp8_weight_ref"]

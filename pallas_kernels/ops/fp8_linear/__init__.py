"""FP8 W8A8 linear: dynamic per-token e4m3 activations x per-channel e4m3 weights ``(N, K)``.

No kernel of its own: the W8A8 dispatch (``ops.w8a8_linear``) on an e4m3 weight — the per-token
quantizer with e4m3 codes (``ops.quantize``, or ``ops.rotate_quantize`` for ViDiT-Q's online rotation)
and the quantized GEMM of ``ops.int8_matmul`` on e4m3 operands (float32 accumulation; the same Mosaic
GPU wgmma / Pallas-Triton kernels, tilings and fused epilogue as int8); semantics in ``reference.py``.
``backend="xla"`` is XLA's own FP8 GEMM (``lax.dot_general`` on ``float8_e4m3fn`` operands,
``preferred_element_type=float32``), the baseline the kernels are measured against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.ops.fp8_linear.reference import FP8, check_fp8_weight, fp8_linear_ref, quantize_fp8_weight_ref
from pallas_kernels.ops.int8_matmul import scaled_gemm
from pallas_kernels.ops.w8a8_linear import w8a8_linear


def fp8_gemm(xq: jax.Array, wq: jax.Array, x_scale: jax.Array | None = None, w_scale: jax.Array | None = None,
             bias: jax.Array | None = None, *, out_dtype: jnp.dtype = jnp.float32, **kw) -> jax.Array:
    """``xq (M, K) e4m3 x wq (N, K) e4m3 -> (M, N)`` with float32 accumulation; with scales the fused
    epilogue (keywords of :func:`pallas_kernels.int8_gemm`: ``backend`` — ``auto`` = Mosaic GPU on
    Hopper, else XLA; ``mosaic``, ``triton`` (interpret mode off GPU), ``xla`` = XLA's FP8 dot —
    ``activation``, ``residual``, ``gate``, ...; no zero points)."""
    check_fp8_weight(wq)
    if xq.dtype != FP8:
        raise TypeError(f"xq must be float8_e4m3fn, got {xq.dtype}")
    return scaled_gemm(xq, wq, x_scale, w_scale, bias, out_dtype=out_dtype, op="fp8_linear", **kw)


def fp8_linear(x: jax.Array, qweight: jax.Array, w_scale: jax.Array, bias: jax.Array | None = None,
               **kw) -> jax.Array | tuple[jax.Array, ...]:
    """FP8 W8A8 linear ``x (M, K) -> (M, N)``: ``x`` quantized per token to e4m3 (rotated first with
    ``rotation=(h_base, signs)``, in the same fused pass), ``qweight (N, K)`` e4m3 with per-channel
    ``w_scale (N,)``; the keywords of :func:`pallas_kernels.w8a8_linear` (``backend``, ``activation``,
    ``splits``, ``residual``/``gate``, ``act_quant``, ...; no ``w_zero_point``)."""
    check_fp8_weight(qweight)
    return w8a8_linear(x, qweight, w_scale, bias, **kw)


__all__ = ["FP8", "fp8_gemm", "fp8_linear", "fp8_linear_ref", "quantize_fp8_weight_ref"]

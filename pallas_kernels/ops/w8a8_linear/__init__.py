"""W8A8 linear: dynamic per-token int8 activations, per-channel int8 weights ``(N, K)``."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from pallas_kernels._compat import on_gpu
from pallas_kernels.ops.int8_matmul.api import int8_gemm, resolve_backend
from pallas_kernels.ops.quantize import quantize_per_token
from pallas_kernels.ops.w8a8_linear.reference import w8a8_linear_dequant_ref, w8a8_linear_ref


def check_linear_args(x: jax.Array, qweight: jax.Array, k_weight: int, w_scale: jax.Array) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (M, K) (flatten leading dims); got {x.shape}")
    if x.shape[1] != k_weight:
        raise ValueError(f"K mismatch: x {x.shape} vs weight {qweight.shape}")
    if w_scale.shape[0] != qweight.shape[0]:
        raise ValueError(f"w_scale {w_scale.shape} does not match N={qweight.shape[0]}")


def split_rows(splits: int, qweight: jax.Array, w_scale: jax.Array, bias: jax.Array | None):
    """``splits`` equal row blocks of the ``(N, ...)`` weight, its scales and bias (output columns)."""
    n = qweight.shape[0]
    if splits < 1 or n % splits:
        raise ValueError(f"N={n} output features do not split into {splits} equal blocks")
    blk = n // splits
    return [(qweight[i * blk:(i + 1) * blk], w_scale[i * blk:(i + 1) * blk],
             None if bias is None else bias[i * blk:(i + 1) * blk]) for i in range(splits)]


def w8a8_linear(
    x: jax.Array,
    qweight: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    backend: str = "auto",
    activation: str | None = None,
    splits: int = 1,
) -> jax.Array | tuple[jax.Array, ...]:
    """W8A8 linear ``x (M, K) -> (M, N)`` (then ``activation``, fused into the epilogue).

    ``x`` bf16/f32 is quantized per token (``pallas_kernels.ops.quantize``), multiplied with
    ``qweight (N, K) int8`` in an int8 GEMM whose epilogue applies
    ``scale_t[:, None] * w_scale[None, :] + bias`` and casts to ``out_dtype``.
    ``backend``: ``auto`` (Mosaic GPU on Hopper, else XLA), ``mosaic``, ``triton``
    (interpret mode off GPU), ``xla``/``reference``.
    ``splits > 1``: a tuple of ``splits`` outputs ``(M, N / splits)`` (column blocks, e.g. q, k, v of a
    fused qkv), one GEMM each on the same quantized ``x``: every block is a contiguous array, so
    the consumer (cuDNN attention) needs no copy of a strided slice.
    """
    if qweight.dtype != jnp.int8:
        raise TypeError(f"qweight must be int8, got {qweight.dtype}")
    check_linear_args(x, qweight, qweight.shape[1], w_scale)
    be = resolve_backend(backend, "w8a8_linear")
    xq, xs = quantize_per_token(x, backend=activation_quant_backend(be))
    outs = tuple(
        int8_gemm(xq, w, xs, ws, b, out_dtype=out_dtype, backend=be, op="w8a8_linear", activation=activation)
        for w, ws, b in split_rows(splits, qweight, w_scale, bias)
    )
    return outs if splits > 1 else outs[0]


ACT_QUANT_ENV = "PALLAS_KERNELS_ACT_QUANT"


def activation_quant_backend(gemm_backend: str) -> str:
    """Quantizer paired with a GEMM backend: the Pallas row-block kernel next to Pallas GEMMs
    on GPU, the XLA fusion otherwise (and for the all-XLA baseline).

    ``$PALLAS_KERNELS_ACT_QUANT=xla`` makes the Pallas GEMMs take their int8 input from an XLA
    fusion instead, which XLA can merge with the op that produces ``x`` (LayerNorm + modulate,
    GELU) so that the bf16 activation is never written; read at trace time."""
    choice = os.environ.get(ACT_QUANT_ENV, "auto")
    if choice not in ("auto", "xla", "triton"):
        raise ValueError(f"${ACT_QUANT_ENV}={choice!r}: expected auto, xla or triton")
    if choice == "xla":
        return "xla"
    return "triton" if gemm_backend in ("mosaic", "triton") and on_gpu() else "xla"


__all__ = [
    "ACT_QUANT_ENV",
    "activation_quant_backend",
    "check_linear_args",
    "split_rows",
    "w8a8_linear",
    "w8a8_linear_dequant_ref",
    "w8a8_linear_ref",
]

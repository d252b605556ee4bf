"""Pallas GPU kernels for ViDiT-Q W8A8 / W4A8 inference (Hopper Mosaic GPU + Pallas-Triton + XLA).

Public API:

* :func:`w8a8_linear` — per-token int8 activations x per-channel int8 weights ``(N, K)``.
* :func:`w4a8_linear` — per-token int8 activations x packed int4 weights ``(N, K//2)``.
* :func:`int8_matmul` — bare ``s8 x s8 -> s32`` GEMM (exactly ``lax.dot_general``).
* :func:`quantize_per_token` — dynamic per-token symmetric int8 quantization.
* :func:`pack_int4` / :func:`unpack_int4` — the int4 storage layout (low nibble = even k).
* :func:`fused_quantize_producer` — LayerNorm/adaLN modulate/smoothing/Hadamard hook + quantize.
* :func:`frame_attention` — attention across the frames of frame-major video tokens (STDiT's
  temporal attention) without transposes.

:func:`is_hopper` says whether ``backend="auto"`` picks the Mosaic GPU kernels here.

Every op has a plain-jnp reference (``*_ref``) that defines its semantics; ``backend="auto"``
uses Mosaic GPU on Hopper and otherwise the XLA int8 path (logged once).
"""

from pallas_kernels._compat import is_hopper
from pallas_kernels.ops.frame_attention import frame_attention, frame_attention_ref
from pallas_kernels.ops.int8_matmul import (
    int8_gemm,
    int8_matmul,
    int8_matmul_ref,
    scaled_epilogue_ref,
)
from pallas_kernels.ops.producer import fused_quantize_producer, fused_quantize_producer_ref
from pallas_kernels.ops.quantize import (
    dequantize_per_token_ref,
    quantize_per_token,
    quantize_per_token_ref,
)
from pallas_kernels.ops.w4a8_linear import pack_int4, unpack_int4, w4a8_linear, w4a8_linear_ref
from pallas_kernels.ops.w8a8_linear import w8a8_linear, w8a8_linear_dequant_ref, w8a8_linear_ref

__all__ = [
    "dequantize_per_token_ref",
    "frame_attention",
    "frame_attention_ref",
    "fused_quantize_producer",
    "fused_quantize_producer_ref",
    "int8_gemm",
    "is_hopper",
    "int8_matmul",
    "int8_matmul_ref",
    "pack_int4",
    "quantize_per_token",
    "quantize_per_token_ref",
    "scaled_epilogue_ref",
    "unpack_int4",
    "w4a8_linear",
    "w4a8_linear_ref",
    "w8a8_linear",
    "w8a8_linear_dequant_ref",
    "w8a8_linear_ref",
]

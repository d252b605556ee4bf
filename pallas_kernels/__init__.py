"""Pallas GPU kernels for ViDiT-Q W8A8 / W4A8 inference (Hopper Mosaic GPU + Pallas-Triton + XLA).

Public API:

* :func:`w8a8_linear` — per-token int8 activations x per-channel int8 weights ``(N, K)``.
* :func:`w4a8_linear` — per-token int8 activations x packed int4 weights ``(N, K//2)``.
* :func:`group_gemm` — Q-DiT's GEMM: activations quantized per token and group x per-group packed int4
  or int8 weights (scales and zero points of both sides per group).
* :func:`fp8_linear` / :func:`fp8_gemm` — FP8 (e4m3) W8A8: per-token e4m3 activations x per-channel
  e4m3 weights, the same GEMM kernels and epilogue as int8 with float32 accumulation.
* :func:`int8_matmul` — bare ``s8 x s8 -> s32`` GEMM (exactly ``lax.dot_general``).
* :func:`quantize_per_token` — dynamic per-token symmetric int8 quantization.
* :func:`rotate_quantize` — smoothing + randomized Hadamard rotation (caller's base ``H_b``) +
  per-token int8 quantization in one pass (ViDiT-Q's online rotation).
* :func:`pack_int4` / :func:`unpack_int4` — THE int4 storage layout (low nibble = even k).
* :func:`fused_quantize_producer` — LayerNorm/adaLN modulate/smoothing/Hadamard hook + quantize.
* :func:`frame_attention` — attention across the frames of frame-major video tokens (STDiT's
  temporal attention) without transposes.
* :func:`quant_attention` — SageAttention-style quantized attention: INT8 ``Q·Kᵀ`` after K
  smoothing, float32 online softmax, FP8 e4m3 (or bf16) ``P·V`` (``ops/quant_attention``).
* :data:`EPILOGUE_ACTIVATIONS` — THE list of activations the GEMM epilogues can fuse
  (name -> reference function); :func:`column_blocks` — THE column split of a linear.

:func:`is_hopper` says whether ``backend="auto"`` picks the Mosaic GPU kernels here.

Every op has a plain-jnp reference (``*_ref``) that defines its semantics; ``backend="auto"``
uses Mosaic GPU on Hopper and otherwise the XLA int8 path (logged once). The package imports jax
alone (never ``models`` / ``vidq_jax`` / ``conversion``) and imports on a CPU-only machine.

Op folders (``pallas_kernels/ops/<op>/``), one shape for every op:

* ``reference.py`` — the plain-jnp reference that defines the semantics (``<op>_ref``) and the
  small helpers it needs; it is also the ``xla``/``reference`` backend (jitted by the dispatch);
* one file per kernel backend, named after it — ``triton.py`` (Pallas-Triton, with a CPU
  ``interpret=True`` twin), ``mosaic.py`` (Mosaic GPU, Hopper only); an ``xla.py`` only when the
  XLA path is not the reference itself. Entry points ``<backend>_<op>`` (``triton_quantize_per_token``),
  tilings as frozen dataclasses;
* ``__init__.py`` — the public dispatch function(s) (``backend="auto"|"mosaic"|"triton"|"xla"|
  "reference"``, validated by ``_compat.check_backend``; unsupported shapes fall back to XLA with a
  one-time log) and ``__all__``; no kernel code;
* optionally ``configs.json`` (shape-keyed tilings, ``_config.lookup``) and helpers of the op's
  data format (``w4a8_linear/packing.py``).

Options are keyword arguments read when a call is traced (``act_quant``, ``approx_gelu``,
``fuse_activation`` of the linears / :func:`int8_gemm`). One documented debug override,
``$PALLAS_KERNELS_DEBUG`` (e.g. ``"act_quant=xla,approx_gelu=0"``), can force them for a whole
process (see ``pallas_kernels._debug``); no other environment variable is read.
"""

from pallas_kernels._compat import is_hopper
from pallas_kernels.ops.fp8_linear import FP8, fp8_gemm, fp8_linear, fp8_linear_ref, quantize_fp8_weight_ref
from pallas_kernels.ops.frame_attention import frame_attention, frame_attention_ref
from pallas_kernels.ops.int8_matmul import (
    EPILOGUE_ACTIVATIONS,
    int8_gemm,
    int8_matmul,
    int8_matmul_ref,
    residual_gate_ref,
    scaled_epilogue_ref,
    zero_point_ref,
)
from pallas_kernels.ops.producer import fused_quantize_producer, fused_quantize_producer_ref
from pallas_kernels.ops.quant_attention import quant_attention, quant_attention_ref
from pallas_kernels.ops.quantize import (
    dequantize_per_token_ref,
    quantize_per_token,
    quantize_per_token_ref,
)
from pallas_kernels.ops.rotate_quantize import rotate_quantize, rotate_quantize_ref
from pallas_kernels.ops.w4a8_linear import (
    group_gemm,
    group_gemm_ref,
    group_gemm_tiling,
    pack_int4,
    unpack_int4,
    w4a8_linear,
    w4a8_linear_ref,
)
from pallas_kernels.ops.w8a8_linear import column_blocks, w8a8_linear, w8a8_linear_dequant_ref, w8a8_linear_ref

__all__ = [
    "EPILOGUE_ACTIVATIONS",
    "FP8",
    "column_blocks",
    "dequantize_per_token_ref",
    "fp8_gemm",
    "fp8_linear",
    "fp8_linear_ref",
    "frame_attention",
    "frame_attention_ref",
    "fused_quantize_producer",
    "fused_quantize_producer_ref",
    "group_gemm",
    "group_gemm_ref",
    "group_gemm_tiling",
    "int8_gemm",
    "is_hopper",
    "int8_matmul",
    "int8_matmul_ref",
    "pack_int4",
    "quant_attention",
    "quant_attention_ref",
    "quantize_fp8_weight_ref",
    "quantize_per_token",
    "quantize_per_token_ref",
    "rotate_quantize",
    "residual_gate_ref",
    "rotate_quantize_ref",
    "scaled_epilogue_ref",
    "unpack_int4",
    "w4a8_linear",
    "w4a8_linear_ref",
    "w8a8_linear",
    "w8a8_linear_dequant_ref",
    "w8a8_linear_ref",
    "zero_point_ref",
]

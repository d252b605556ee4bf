"""Smoothing + randomized Hadamard rotation + dynamic per-token int8 quantization, one pass.

``y = ((x · smooth_mult) · signs) · (H_b ⊗ H_p) / sqrt(K)`` quantized per token (``reference.py``);
the caller passes the base ``H_b`` (e.g. ``vidq_jax.quant.hadamard.base_hadamard(36)``), this
package knows no construction.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _config
from pallas_kernels._compat import check_backend, log_once, on_gpu, pltriton
from pallas_kernels.ops.rotate_quantize.reference import (
    input_ref,
    rotate_quantize_ref,
    rotate_ref,
    split_order,
    sylvester,
)
from pallas_kernels.ops.rotate_quantize.triton import (
    RotateTiling,
    supported,
    supported_input,
    triton_rotate_quantize,
)

_xla_rotate_quantize = jax.jit(rotate_quantize_ref, static_argnames=("row_sum", "dtype", "bf16_input"))
CONFIG_FILE = Path(__file__).with_name("configs.json")


def rotate_tiling(k: int, smooth: bool = False, prenorm: bool = False, m: int | None = None) -> RotateTiling:
    """Stored tiling for this K (keyed like the GEMMs: ``"64,<K>,0"``, the M-bucket unused) or, where a row
    ``"<M-bucket>,<K>,0"`` is stored, for the ``m`` rows' bucket; ``smooth``: the one for in-kernel float32
    smoothing (float32 operands: more registers, so more warps); ``prenorm``: the one for the LayerNorm prologue
    (table ``triton_rotate_quantize_prenorm``, else the plain one)."""
    tables = ["triton_rotate_quantize_prenorm"] if prenorm else []
    tables.append("triton_rotate_quantize_smooth" if smooth else "triton_rotate_quantize")
    for table in tables:
        d = (m is not None and _config.lookup_row(CONFIG_FILE, table, m, k, 0)) or _config.lookup_row(
            CONFIG_FILE, table, 0, k, 0)
        if d:
            break
    else:  # no row for this K: the last table's "default" row
        d = _config.lookup(CONFIG_FILE, tables[-1], 0, k, 0, {})
    return RotateTiling.from_dict(d)


def rotate_quantize(
    x: jax.Array,
    h_base,
    signs: jax.Array | None = None,
    smooth_mult: jax.Array | None = None,
    *,
    backend: str = "auto",
    tiling: RotateTiling | None = None,
    row_sum: bool = False,
    dtype=jnp.int8,
    prenorm: tuple | None = None,
    bf16_input: bool = False,
) -> tuple[jax.Array, ...]:
    """``x (..., K)`` bf16/f32 -> ``(int8 (..., K), float32 scale (..., 1))`` of the rotated row,
    plus the int32 code sums ``(..., 1)`` with ``row_sum=True`` (reduced in the kernel); ``dtype=FP8``
    (``jnp.float8_e4m3fn``): e4m3 codes (``scale = max|y| / 448``).

    The producer of the row, fused (``reference.input_ref``): ``bf16_input=True`` rounds the smoothing
    multiplier and ``x · smooth_mult`` to bf16 (the value a separate bf16 pass would write, so bf16
    ``x`` keeps the kernel's exact one-operand dot: no float32 split); ``prenorm=(a (G, K), c (G, K),
    eps)`` makes ``x`` the pre-LayerNorm stream and the row ``LayerNorm(x) · a[g] + c[g]`` (a DiT
    block's adaLN with the smoothing folded into ``a`` and ``c``; rows in ``G`` equal groups), which
    the kernel computes from its registers (with ``bf16_input``; otherwise, or for a tiling that cannot,
    the XLA path, logged once).

    ``h_base (b, b)`` ±1 with ``K = b · 2^k``; ``signs``/``smooth_mult`` ``(K,)`` or ``None``.
    ``auto`` (and ``mosaic``, which has no kernel here): the Pallas-Triton kernel on a GPU, the
    jitted reference elsewhere; ``triton`` forces the kernel (interpret mode off GPU);
    ``xla``/``reference``: the reference. The kernel needs a concrete ``h_base`` (it is compiled
    in); a traced one, or a shape the tiling cannot run, falls back to XLA (logged once).
    ``tiling`` overrides the stored ``configs.json`` choice (benchmarks).
    """
    check_backend(backend)
    k = x.shape[-1]
    want_kernel = backend == "triton" or (backend in ("auto", "mosaic") and on_gpu())
    if want_kernel and pltriton is not None:
        try:
            hb = np.asarray(h_base, np.float32)
        except (jax.errors.TracerArrayConversionError, TypeError):
            hb = None
            log_once("rotate_quantize:traced", "rotate_quantize: h_base is traced, not concrete; "
                     "using the XLA path")
        cfg = tiling or rotate_tiling(k, smooth_mult is not None and not bf16_input, prenorm is not None,
                                      m=math.prod(x.shape[:-1]))
        reason = None if hb is None else (supported(k, hb, cfg) or supported_input(
            x.reshape(-1, k), smooth_mult, prenorm, bf16_input, hb, cfg))
        if hb is not None and reason:
            log_once(f"rotate_quantize:{k}:{cfg}", f"rotate_quantize: {reason}; using the XLA path")
        if hb is not None and not reason:
            lead = x.shape[:-1]
            q, *rest = triton_rotate_quantize(x.reshape(-1, k), hb, signs, smooth_mult, cfg=cfg,
                                              interpret=not on_gpu(), row_sum=row_sum, dtype=dtype,
                                              prenorm=prenorm, bf16_input=bf16_input)
            return (q.reshape(*lead, k), *(a.reshape(*lead, 1) for a in rest))
    return _xla_rotate_quantize(x, h_base, signs, smooth_mult, row_sum=row_sum, dtype=jnp.dtype(dtype),
                                prenorm=prenorm, bf16_input=bool(bf16_input))


__all__ = [
    "RotateTiling",
    "input_ref",
    "rotate_quantize",
    "rotate_quantize_ref",
    "rotate_ref",
    "rotate_tiling",
    "split_order",
    "sylvester",
    "triton_rotate_quantize",
]

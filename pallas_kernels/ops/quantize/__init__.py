"""Dynamic per-token symmetric int8 quantization of activations."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from pallas_kernels import _config
from pallas_kernels._compat import check_backend, on_gpu, pltriton
from pallas_kernels.ops.quantize.reference import (
    FP8,
    FP8_MAX,
    QMAX,
    code_max,
    code_row_sum,
    dequantize_per_token_ref,
    quantize_per_token_ref,
    quantize_with_scale,
    row_scale,
    token_dot,
)
from pallas_kernels.ops.quantize.triton import QuantizeTiling, fit_chunk, triton_quantize_per_token

_xla_quantize = jax.jit(quantize_per_token_ref, static_argnames=("row_sum", "dtype"))
CONFIG_FILE = Path(__file__).with_name("configs.json")


def quantize_tiling(k: int) -> QuantizeTiling:
    """Stored row-block tiling for this K (keyed like the GEMMs, with M-bucket/N unused)."""
    d = _config.lookup(CONFIG_FILE, "triton_quantize", 0, k, 0, {})
    fields = ("bm", "chunk", "num_warps", "num_stages", "unroll", "tile_elems")
    return QuantizeTiling(**{f: d[f] for f in fields if f in d})


def quantize_per_token(x: jax.Array, *, backend: str = "auto", row_sum: bool = False,
                       dtype=jnp.int8, alpha: jax.Array | None = None,
                       u_scale: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """``x (..., K)`` -> ``(int8 (..., K), float32 scale (..., 1))`` (see ``reference.py``), plus
    the int32 code sums ``(..., 1)`` with ``row_sum=True`` (the zero-point term of a GEMM epilogue);
    ``dtype=FP8`` (``jnp.float8_e4m3fn``): e4m3 codes with ``scale = max|x| / 448``; plus, with
    ``alpha (K,)``, the float32 ``u = scale · Σ_k q·alpha`` ``(..., 1)`` (times ``u_scale``, one value
    per token): the per-token scalar of a rank-1 epilogue term (``reference.token_dot``).

    ``auto``: the XLA fusion (see ``benchmarks/results/linear.md`` for the measured comparison);
    ``triton``: the one-row-block-per-program Pallas kernel (interpret mode off GPU).
    """
    check_backend(backend)
    if backend == "triton" and pltriton is not None and fit_chunk(x.shape[-1], 1024):
        lead = x.shape[:-1]
        cfg = quantize_tiling(x.shape[-1])
        outs = triton_quantize_per_token(x.reshape(-1, x.shape[-1]), cfg=cfg,
                                         interpret=not on_gpu(), row_sum=row_sum, dtype=jnp.dtype(dtype),
                                         alpha=alpha, u_scale=None if u_scale is None else jnp.reshape(u_scale, (-1,)))
        return (outs[0].reshape(*lead, x.shape[-1]),) + tuple(o.reshape(*lead, 1) for o in outs[1:])
    return _xla_quantize(x, row_sum=row_sum, dtype=jnp.dtype(dtype), alpha=alpha, u_scale=u_scale)


__all__ = [
    "FP8",
    "FP8_MAX",
    "QMAX",
    "code_max",
    "QuantizeTiling",
    "code_row_sum",
    "triton_quantize_per_token",
    "dequantize_per_token_ref",
    "quantize_per_token",
    "quantize_per_token_ref",
    "quantize_tiling",
    "quantize_with_scale",
    "row_scale",
    "token_dot",
]

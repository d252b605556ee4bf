"""Dynamic per-token symmetric int8 quantization of activations."""

from __future__ import annotations

import jax

from pallas_kernels.quantize.reference import (
    QMAX,
    dequantize_per_token_ref,
    quantize_per_token_ref,
    quantize_with_scale,
    row_scale,
)


@jax.jit
def quantize_per_token(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x (..., K)`` -> ``(int8 (..., K), float32 scale (..., 1))`` (see ``reference.py``).

    On GPU XLA emits this as a single row-reduction + elementwise fusion that reads ``x`` once
    per pass; a standalone Pallas producer was not faster, so the fused producer lives in
    :mod:`pallas_kernels.producer` (LayerNorm/modulate/smoothing + quantization in one pass).
    """
    return quantize_per_token_ref(x)


__all__ = [
    "QMAX",
    "dequantize_per_token_ref",
    "quantize_per_token",
    "quantize_per_token_ref",
    "quantize_with_scale",
    "row_scale",
]

"""Fused producer: LayerNorm (no affine) + adaLN modulate + smoothing + hook + int8 quantization."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pallas_kernels._compat import check_backend, on_gpu, pltriton
from pallas_kernels.ops.producer.reference import (
    LN_EPS,
    fused_quantize_producer_ref,
    layernorm_noaffine,
    producer_prequant_ref,
)
from pallas_kernels.ops.producer.triton import ProducerConfig, triton_fused_producer
from pallas_kernels.ops.quantize.triton import fit_chunk

_xla_producer = jax.jit(fused_quantize_producer_ref, static_argnames=("hook", "eps"))


def fused_quantize_producer(
    x: jax.Array,
    shift: jax.Array | None = None,
    scale: jax.Array | None = None,
    smooth: jax.Array | None = None,
    hook: Callable[[jax.Array], jax.Array] | None = None,
    *,
    eps: float = LN_EPS,
    backend: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """LN(no affine) -> ``*(1+scale)+shift`` -> ``*smooth`` -> ``hook`` -> per-token int8.

    ``x (B, L, K)``; ``shift``/``scale`` ``(B, 1, K)`` (or ``(B, K)``); ``smooth (K,)``.
    ``auto``: the Pallas-Triton kernel on GPU when there is no ``hook`` (one pass over ``x``),
    else the jitted XLA reference (``hook`` must then be hashable, e.g. a
    ``jax.tree_util.Partial``). ``triton`` forces the kernel (interpret mode off GPU).
    """
    check_backend(backend)
    use_kernel = (
        hook is None
        and x.ndim == 3
        and pltriton is not None
        and fit_chunk(x.shape[-1], 1024) > 0
        and (backend == "triton" or (backend in ("auto", "mosaic") and on_gpu()))
    )
    if not use_kernel:
        return _xla_producer(x, shift, scale, smooth, hook, eps=eps)
    b, _, k = x.shape
    zeros = jnp.zeros((b, 1, k), jnp.float32)
    shift = zeros if shift is None else jnp.broadcast_to(jnp.reshape(shift, (b, 1, k)), (b, 1, k))
    scale = zeros if scale is None else jnp.broadcast_to(jnp.reshape(scale, (b, 1, k)), (b, 1, k))
    smooth = jnp.ones((k,), jnp.float32) if smooth is None else smooth
    return triton_fused_producer(x, shift, scale, smooth, eps=eps, interpret=not on_gpu())


__all__ = [
    "LN_EPS",
    "ProducerConfig",
    "triton_fused_producer",
    "fused_quantize_producer",
    "fused_quantize_producer_ref",
    "layernorm_noaffine",
    "producer_prequant_ref",
]

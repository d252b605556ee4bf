"""Attention across the frames of frame-major video tokens (temporal attention of STDiT/STDiT3)."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels._compat import check_backend, on_gpu, pltriton
from pallas_kernels.ops.frame_attention.reference import frame_attention_ref
from pallas_kernels.ops.frame_attention.triton import (
    FrameAttentionConfig,
    head_chunks,
    triton_frame_attention,
)

MAX_FRAMES = 64  # the kernel keeps the (T, T) logits of one position in registers


def frame_attention(q, k, v, *, backend: str = "auto"):
    """``q, k, v (B, T, S, H, D)`` → ``(B, T, S, H, D)``: each position attends over its frames.

    ``auto``: the Pallas-Triton kernel on GPU for half-precision inputs with ``T <= 64`` and
    ``D >= 16``, else the einsum reference (float32 inputs keep the reference: it is the parity
    path). ``triton`` forces the kernel (interpret mode off GPU); ``xla``/``reference``: reference.
    """
    check_backend(backend)
    fits = (q.ndim == 5 and q.shape[1] <= MAX_FRAMES and q.shape[-1] >= 16 and pltriton is not None)
    half = q.dtype in (jnp.bfloat16, jnp.float16)
    if fits and (backend == "triton" or (backend in ("auto", "mosaic") and half and on_gpu())):
        return triton_frame_attention(q, k, v, interpret=not on_gpu())
    return frame_attention_ref(q, k, v)


__all__ = [
    "FrameAttentionConfig",
    "MAX_FRAMES",
    "frame_attention",
    "frame_attention_ref",
    "head_chunks",
    "triton_frame_attention",
]

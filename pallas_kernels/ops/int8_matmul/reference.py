"""Plain-jnp/XLA definitions of the int8 GEMM and of the dequantizing epilogue.

``int8_matmul_ref`` is also the production ``xla`` backend: on GPU XLA lowers it to a cuBLASLt
``s8 x s8 -> s32`` GEMM (weights ``(N, K)``, K contiguous, so no layout copy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Contract the K axis (dim 1) of x (M, K) with the K axis (dim 1) of w (N, K).
NT_DIMS = (((1,), (1,)), ((), ()))


def int8_matmul_ref(xq: jax.Array, wq: jax.Array) -> jax.Array:
    """``xq (M, K) int8 @ wq (N, K)^T int8 -> (M, N) int32`` with exact int32 accumulation."""
    return lax.dot_general(xq, wq, NT_DIMS, preferred_element_type=jnp.int32)


def scaled_epilogue_ref(
    acc: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None,
    out_dtype: jnp.dtype,
) -> jax.Array:
    """``acc * x_scale[:, None] * w_scale[None, :] + bias`` in float32, cast to ``out_dtype``.

    ``x_scale`` is ``(M, 1)`` or ``(M,)``; ``w_scale`` and ``bias`` are ``(N,)``.
    """
    xs = jnp.reshape(x_scale, (-1, 1)).astype(jnp.float32)
    y = acc.astype(jnp.float32) * xs * w_scale.astype(jnp.float32)[None, :]
    if bias is not None:
        y = y + bias.astype(jnp.float32)[None, :]
    return y.astype(out_dtype)

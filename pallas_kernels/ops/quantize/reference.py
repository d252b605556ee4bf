"""Plain-jnp definition of dynamic per-token symmetric quantization (the semantics contract).

For each row ``t`` of ``x`` (last axis = K), with ``qmax`` = 127 for int8 codes (the default) and 448
(the largest finite value) for FP8 ``float8_e4m3fn`` codes (``dtype=FP8``):

* ``scale_t = max_k |x[t, k]| / qmax`` computed in float32; an all-zero row gets ``scale_t = 1``
  (so it quantizes to zeros and dequantizes to exact zeros, never NaN);
* int8: ``q[t, k] = clip(round_half_even(x[t, k] / scale_t), -127, 127)``;
  FP8: ``q[t, k] = e4m3(clip(x[t, k] / scale_t, -448, 448))`` (round to nearest even);
* optionally (``row_sum=True``, int8 only) ``Σ_k q[t, k]`` as int32 ``(..., 1)``: the per-token code
  sum a GEMM epilogue needs for a weight zero point (``acc + z_w[n] · Σ_k q[m, k]``), emitted by the
  quantizer kernels from the codes they write (no extra pass over ``q``);
* optionally (``alpha (K,)`` given) ``u[t] = u_scale[t] · scale_t · Σ_k q[t, k] · alpha[k]`` as float32
  ``(..., 1)`` (:func:`token_dot`): the dot product of the dequantized row with ``alpha`` — the per-token
  scalar of a rank-1 GEMM epilogue term ``u ⊗ β`` (Q-VDiT's TQE branch), reduced from the codes in
  registers like the code sums; ``u_scale (...)`` (optional, one float per token) multiplies it.

The same per-row rule quantizes an FP8 weight ``(N, K)`` per output channel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

QMAX = 127.0
FP8 = jnp.dtype(jnp.float8_e4m3fn)
FP8_MAX = 448.0
CODE_DTYPES = (jnp.dtype(jnp.int8), FP8)


def code_max(dtype=jnp.int8) -> float:
    """Largest code magnitude of a code dtype (int8: 127, e4m3: 448); ValueError for others."""
    dtype = jnp.dtype(dtype)
    if dtype not in CODE_DTYPES:
        raise ValueError(f"code dtype {dtype} unsupported; choose one of {[str(d) for d in CODE_DTYPES]}")
    return FP8_MAX if dtype == FP8 else QMAX


def row_scale(x: jax.Array, qmax: float = QMAX) -> jax.Array:
    """Per-row symmetric scale ``max|x|/qmax`` in float32, shape ``(..., 1)``; zero rows give 1."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True)
    scale = amax / qmax
    return jnp.where(scale > 0, scale, jnp.float32(1.0))


def quantize_with_scale(x: jax.Array, scale: jax.Array, dtype=jnp.int8) -> jax.Array:
    """``clip(round(x / scale), -127, 127)`` as int8, or ``e4m3(clip(x / scale, -448, 448))``
    (``scale`` broadcasts against ``x``)."""
    qmax = code_max(dtype)
    v = x.astype(jnp.float32) / scale
    if jnp.dtype(dtype) == FP8:
        return jnp.clip(v, -qmax, qmax).astype(FP8)
    return jnp.clip(jnp.round(v), -qmax, qmax).astype(jnp.int8)


def code_row_sum(q: jax.Array) -> jax.Array:
    """``Σ_k q[..., k]`` of int8 codes as int32 ``(..., 1)`` (exact)."""
    return jnp.sum(q.astype(jnp.int32), axis=-1, keepdims=True)


def token_dot(q: jax.Array, scale: jax.Array, alpha: jax.Array, u_scale: jax.Array | None = None) -> jax.Array:
    """``u = scale · Σ_k q[..., k] · alpha[k]`` (times ``u_scale``, one value per token) as float32
    ``(..., 1)``: the dequantized row's dot product with ``alpha`` (a float32 sum of products, never a
    reduced-precision matmul)."""
    u = scale.astype(jnp.float32) * jnp.sum(q.astype(jnp.float32) * alpha.astype(jnp.float32), axis=-1,
                                            keepdims=True)
    return u if u_scale is None else u * jnp.reshape(u_scale, u.shape).astype(jnp.float32)


def check_alpha(alpha: jax.Array | None, u_scale: jax.Array | None, shape: tuple[int, ...]) -> None:
    """``alpha (K,)`` for rows ``shape = (..., K)``; ``u_scale`` (one value per row) only with ``alpha``."""
    if alpha is None:
        if u_scale is not None:
            raise ValueError("u_scale multiplies the alpha dot product: pass alpha too")
        return
    if jnp.shape(alpha) != shape[-1:]:
        raise ValueError(f"alpha must be (K,) = ({shape[-1]},), got {jnp.shape(alpha)}")
    rows = math.prod(shape[:-1])
    if u_scale is not None and jnp.size(u_scale) != rows:
        raise ValueError(f"u_scale must hold one value per token ({rows}), got shape {jnp.shape(u_scale)}")


def quantize_per_token_ref(x: jax.Array, row_sum: bool = False, dtype=jnp.int8, alpha: jax.Array | None = None,
                           u_scale: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """Per-token quantization ``x (..., K)`` -> ``(codes (..., K), f32 scale (..., 1))`` with int8
    (default) or FP8 e4m3 codes (``dtype``), plus the int32 code sums ``(..., 1)`` (:func:`code_row_sum`)
    with ``row_sum=True`` (int8 only), plus ``u (..., 1)`` float32 (:func:`token_dot`) with ``alpha``."""
    check_row_sum(row_sum, dtype)
    check_alpha(alpha, u_scale, x.shape)
    scale = row_scale(x, code_max(dtype))
    q = quantize_with_scale(x, scale, dtype)
    outs = (q, scale, code_row_sum(q)) if row_sum else (q, scale)
    return outs if alpha is None else outs + (token_dot(q, scale, alpha, u_scale),)


def check_row_sum(row_sum: bool, dtype) -> None:
    if row_sum and jnp.dtype(dtype) != jnp.int8:
        raise ValueError("row_sum=True: code sums exist for int8 codes only (zero points), not FP8")


def dequantize_per_token_ref(q: jax.Array, scale: jax.Array) -> jax.Array:
    return q.astype(jnp.float32) * scale

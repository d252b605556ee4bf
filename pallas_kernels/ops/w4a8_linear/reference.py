"""Plain-jnp W4A8 linear (int8 per-token activations x packed int4 weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.ops.int8_matmul.reference import int8_matmul_ref, scaled_epilogue_ref
from pallas_kernels.ops.quantize.reference import quantize_per_token_ref
from pallas_kernels.ops.w4a8_linear.packing import unpack_int4


def grouped_int8_matmul_ref(xq: jax.Array, wq: jax.Array, w_scale: jax.Array) -> jax.Array:
    """``sum_g (xq_g @ wq_g^T) * w_scale[:, g]`` in float32 for per-group weight scales.

    ``xq (M, K)``, ``wq (N, K)`` int8, ``w_scale (N, G)`` with ``K = G * group_size``.
    """
    m, k = xq.shape
    n, g = w_scale.shape
    gs = k // g
    xg = xq.reshape(m, g, gs)
    wg = wq.reshape(n, g, gs)
    acc = lax.dot_general(xg, wg, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)
    # acc: (G, M, N)
    return jnp.einsum("gmn,ng->mn", acc.astype(jnp.float32), w_scale.astype(jnp.float32))


def w4a8_linear_ref(
    x: jax.Array,
    qweight_packed: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    activation: str | None = None,
    w_zero_point: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
) -> jax.Array:
    """W4A8 reference; ``w_scale`` ``(N,)`` per channel or ``(N, K // group_size)`` per group;
    ``activation`` applied after the bias (and the rank-1 term of ``rank1=(alpha, beta[, u_scale])``, as
    in ``w8a8_linear_ref``), then ``residual + gate · y`` (see
    ``int8_matmul.reference.scaled_epilogue_ref``); ``w_zero_point (N,)`` int32 (per channel only):
    asymmetric weights ``(q + z) · s``."""
    alpha, beta, u_scale = (None, None, None) if rank1 is None else (*rank1, None)[:3]
    xq, xs, rs, *u = quantize_per_token_ref(x, row_sum=True, alpha=alpha, u_scale=u_scale)
    wq = unpack_int4(qweight_packed)
    extras = dict(residual=residual, gate=gate, rank1=None if rank1 is None else (u[0], beta))
    if w_scale.ndim == 1:
        return scaled_epilogue_ref(int8_matmul_ref(xq, wq), xs, w_scale, bias, out_dtype, activation,
                                   w_zero=w_zero_point, x_row_sum=None if w_zero_point is None else rs, **extras)
    if w_zero_point is not None:
        raise ValueError("w4a8 zero points are per output channel (w_scale (N,)), not per group")
    y = grouped_int8_matmul_ref(xq, wq, w_scale)
    ones = jnp.ones((wq.shape[0],), jnp.float32)
    return scaled_epilogue_ref(y, xs, ones, bias, out_dtype, activation, **extras)


def group_gemm_ref(
    xq: jax.Array,
    x_scale: jax.Array,
    w: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    x_zero: jax.Array | None = None,
    w_zero: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Per-token-per-group activations x per-group weights (Q-DiT), one group size on both sides::

        y[m, n] = Σ_g x_scale[m, g] · w_scale[n, g] · Σ_{k in g} (xq[m, k] + x_zero[m, g]) · (wq[n, k] + w_zero[n, g])

    (+ ``bias``) in float32, the inner sums exactly in int32 (``x_zero`` / ``w_zero`` ``None`` = 0).
    ``xq (M, K)`` int8; ``w`` packed int4 uint8 ``(N, K // 2)`` (:func:`pack_int4`) or int8 ``(N, K)``;
    scales float32 and zero points int32 of shape ``(M, G)`` / ``(N, G)``, ``K = G · group_size``.
    """
    wq = unpack_int4(w) if w.dtype == jnp.uint8 else w
    m, k = xq.shape
    n, g = w_scale.shape

    def shifted(q, z, rows):
        q = q.astype(jnp.int32).reshape(rows, g, k // g)
        return q if z is None else q + jnp.asarray(z, jnp.int32)[..., None]

    acc = lax.dot_general(shifted(xq, x_zero, m), shifted(wq, w_zero, n), (((2,), (2,)), ((1,), (1,))),
                          preferred_element_type=jnp.int32)  # (G, M, N)
    scales = x_scale.astype(jnp.float32).T[:, :, None] * w_scale.astype(jnp.float32).T[:, None, :]
    y = jnp.sum(acc.astype(jnp.float32) * scales, axis=0)
    return (y if bias is None else y + bias.astype(jnp.float32)).astype(out_dtype)

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
) -> jax.Array:
    """W4A8 reference; ``w_scale`` ``(N,)`` per channel or ``(N, K // group_size)`` per group;
    ``activation`` applied after the bias, then ``residual + gate · y`` (see
    ``int8_matmul.reference.scaled_epilogue_ref``); ``w_zero_point (N,)`` int32 (per channel only):
    asymmetric weights ``(q + z) · s``."""
    xq, xs, rs = quantize_per_token_ref(x, row_sum=True)
    wq = unpack_int4(qweight_packed)
    extras = dict(residual=residual, gate=gate)
    if w_scale.ndim == 1:
        return scaled_epilogue_ref(int8_matmul_ref(xq, wq), xs, w_scale, bias, out_dtype, activation,
                                   w_zero=w_zero_point, x_row_sum=None if w_zero_point is None else rs, **extras)
    if w_zero_point is not None:
        raise ValueError("w4a8 zero points are per output channel (w_scale (N,)), not per group")
    y = grouped_int8_matmul_ref(xq, wq, w_scale)
    ones = jnp.ones((wq.shape[0],), jnp.float32)
    return scaled_epilogue_ref(y, xs, ones, bias, out_dtype, activation, **extras)

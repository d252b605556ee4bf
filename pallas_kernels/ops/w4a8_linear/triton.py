"""Pallas-Triton W4A8 GEMM: int8 activations x packed int4 weights, unpacked in registers.

The activations arrive de-interleaved along K (``[even k | odd k]``, done by the quantizing
producer), so each packed weight tile ``(bn, bkp)`` splits into two int8 nibble planes that meet
two contiguous activation tiles: ``acc += A_even @ lo^T + A_odd @ hi^T`` (s8 tensor-core dots).
Per-group scales are applied in float32 after each group's int32 partial sum.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, triton_compiler_params
from pallas_kernels.ops.int8_matmul.reference import NT_DIMS
from pallas_kernels.ops.int8_matmul.triton import TritonGemmConfig, epilogue, pad_rows
from pallas_kernels.ops.w4a8_linear.packing import unpack_nibbles


def fit_w4_config(
    cfg: TritonGemmConfig, m: int, k: int, n: int, group_size: int | None
) -> TritonGemmConfig | None:
    """Packed tile width ``bkp = cfg.bk // 2`` must divide K/2 (and group_size/2 if grouped)."""
    span = k // 2 if group_size is None else group_size // 2
    bkp, bn = cfg.bk // 2, cfg.bn
    while bkp >= 16 and span % bkp:
        bkp //= 2
    while bn >= 16 and n % bn:
        bn //= 2
    if bkp < 16 or bn < 16:
        return None
    bm = cfg.bm
    while bm > 16 and bm >= 2 * max(m, 16):
        bm //= 2
    return TritonGemmConfig(bm=bm, bn=bn, bk=2 * bkp, num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, k: int, bkp: int, n_groups: int,
            has_bias: bool, has_zp: bool = False):
    o_ref, rest = rest[-1], list(rest[:-1])
    b_ref = rest.pop(0) if has_bias else None
    zw_ref, rs_ref = rest if has_zp else (None, None)
    bm, bn = o_ref.shape
    half = k // 2
    tiles_per_group = half // n_groups // bkp

    def tile(j, acc):
        off = pl.multiple_of(j * bkp, bkp)
        lo, hi = unpack_nibbles(w_ref[:, pl.ds(off, bkp)])
        a_even = x_ref[:, pl.ds(off, bkp)]
        a_odd = x_ref[:, pl.ds(half + off, bkp)]
        acc = acc + lax.dot_general(a_even, lo, NT_DIMS, preferred_element_type=jnp.int32)
        return acc + lax.dot_general(a_odd, hi, NT_DIMS, preferred_element_type=jnp.int32)

    zeros = jnp.zeros((bm, bn), jnp.int32)
    if n_groups == 1:
        acc = lax.fori_loop(0, tiles_per_group, tile, zeros)
        epilogue(acc, xs_ref, ws_ref[...], b_ref, o_ref, zw=None if zw_ref is None else zw_ref[...], rs_ref=rs_ref)
        return

    def group(g, accf):
        start = g * tiles_per_group
        acc = lax.fori_loop(start, start + tiles_per_group, tile, zeros)
        return accf + acc.astype(jnp.float32) * ws_ref[pl.ds(g, 1), :]

    accf = lax.fori_loop(0, n_groups, group, jnp.zeros((bm, bn), jnp.float32))
    epilogue(accf, xs_ref, None, b_ref, o_ref)


@functools.partial(jax.jit, static_argnames=("cfg", "out_dtype", "interpret"))
def triton_w4a8_gemm(
    xq_deint: jax.Array,
    w_packed: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    cfg: TritonGemmConfig,
    out_dtype: jnp.dtype = jnp.bfloat16,
    interpret: bool = False,
    w_zero: jax.Array | None = None,
    x_row_sum: jax.Array | None = None,
) -> jax.Array:
    """``xq_deint (M, K)`` int8 (K de-interleaved), ``w_packed (N, K//2)`` uint8/int8,
    ``w_scale (N,)`` or ``(N, G)`` -> ``(M, N)`` out_dtype; per-channel scales may come with zero
    points ``w_zero (N,)`` and the code sums ``x_row_sum (M,)`` (int32 term in the epilogue)."""
    m, k = xq_deint.shape
    n = w_packed.shape[0]
    bm, bn, bkp = cfg.bm, cfg.bn, cfg.bk // 2
    w_packed = lax.bitcast_convert_type(w_packed, jnp.int8)
    xq = pad_rows(xq_deint, bm)
    mp = xq.shape[0]
    grouped = w_scale.ndim == 2
    n_groups = w_scale.shape[1] if grouped else 1
    ws = (w_scale.T if grouped else jnp.reshape(w_scale, (1, -1))).astype(jnp.float32)
    args = [xq, w_packed, pad_rows(jnp.reshape(x_scale, (-1, 1)).astype(jnp.float32), bm), ws]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
        pl.BlockSpec((bn, k // 2), lambda i, j: (j, 0)),
        pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
        pl.BlockSpec((n_groups, bn), lambda i, j: (0, j)),
    ]
    if bias is not None:
        args.append(jnp.reshape(bias, (1, -1)).astype(jnp.float32))
        in_specs.append(pl.BlockSpec((1, bn), lambda i, j: (0, j)))
    has_zp = w_zero is not None
    if has_zp:
        if grouped or x_row_sum is None:
            raise ValueError("W4A8 zero points: per-channel scales only, with the code sums x_row_sum")
        args += [jnp.reshape(w_zero, (1, -1)).astype(jnp.int32),
                 pad_rows(jnp.reshape(x_row_sum, (-1, 1)).astype(jnp.int32), bm)]
        in_specs += [pl.BlockSpec((1, bn), lambda i, j: (0, j)), pl.BlockSpec((bm, 1), lambda i, j: (i, 0))]
    out = pl.pallas_call(
        functools.partial(_kernel, k=k, bkp=bkp, n_groups=n_groups, has_bias=bias is not None,
                          has_zp=has_zp),
        out_shape=jax.ShapeDtypeStruct((mp, n), jnp.dtype(out_dtype)),
        grid=(mp // bm, n // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return out[:m] if mp != m else out

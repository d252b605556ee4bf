"""Pallas-Triton per-token quantization: one program quantizes ``bm`` full rows.

Two passes over the row block in power-of-two K chunks (the block is re-read from L1/L2 in the
second pass, so HBM sees ``x`` once): pass 1 computes ``max|x|`` per row, pass 2 writes
``clip(round(x / scale))`` as int8 (and, with ``row_sum=True``, the int32 sum of each row's codes,
reduced from the registers that hold them). Semantics: :mod:`pallas_kernels.ops.quantize.reference`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params
from pallas_kernels.ops.quantize.reference import FP8, check_row_sum, code_max


def round_half_even(v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Round-half-to-even of float32 ``v`` inside a Pallas-Triton kernel.

    Pallas Triton has no ``round`` lowering, so on the GPU this is one PTX ``cvt.rni.f32.f32``
    per element (inline assembly; the floor/compare emulation it replaces cost ~10 ALU ops per
    element on the quantizer's critical path). Interpret mode (CPU) cannot run PTX and uses
    ``lax.round`` with the same rounding.
    """
    if interpret:
        return lax.round(v, lax.RoundingMethod.TO_NEAREST_EVEN)
    (r,) = pltriton.elementwise_inline_asm(
        "cvt.rni.f32.f32 $0, $1;", args=[v], constraints="=r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.float32)])
    return r


@dataclasses.dataclass(frozen=True)
class QuantizeTiling:
    """``unroll=True``: the ``(bm, K)`` row block is loaded as K/chunk register tiles in one
    statically unrolled sweep (all loads in flight together, one HBM read, no re-read);
    ``unroll=False``: two ``fori_loop`` passes (pass 2 re-reads the block from L1/L2).
    Pallas Triton needs power-of-two tiles, hence the chunking for K = 1152, 4608, ..."""

    bm: int = 0  # 0: rows_per_block() -- tile_elems values per register tile
    chunk: int = 1024  # upper bound; the largest power of two dividing K is used
    num_warps: int = 4
    num_stages: int = 1
    unroll: bool = True
    tile_elems: int = 1024  # 8 elements (16 bytes of bf16) per thread of 4 warps


def rows_per_block(bm: int, chunk: int, tile_elems: int = 1024) -> int:
    """``bm`` if set, else ``tile_elems // chunk`` rows (>= 1): every thread then loads 16-byte
    vectors and a program holds ``bm * K / (32 * num_warps)`` floats per thread (72 for
    K = 1152 and K = 4608)."""
    return bm if bm else max(1, tile_elems // chunk)


def fit_chunk(k: int, chunk: int) -> int:
    """Largest power of two <= ``chunk`` dividing K (>= 16), else 0."""
    c = chunk
    while c >= 16 and k % c:
        c //= 2
    return c if c >= 16 else 0


def load_chunks(ref, chunk: int) -> list[jax.Array]:
    """Static list of float32 ``(rows, chunk)`` tiles covering a ``(rows, K)`` ref."""
    k = ref.shape[-1]
    return [ref[:, pl.ds(i * chunk, chunk)].astype(jnp.float32) for i in range(k // chunk)]


def codes(v: jax.Array, dtype, *, interpret: bool = False) -> jax.Array:
    """``v = x / scale`` (float32) -> the codes of ``reference.quantize_with_scale``: int8 values as
    float32 (rounded, clipped; the caller casts), or FP8 e4m3 (clipped, converted with round to
    nearest even: Triton's ``fp_to_fp`` RTNE)."""
    qmax = code_max(dtype)
    if jnp.dtype(dtype) == FP8:
        return jnp.clip(v, -qmax, qmax).astype(FP8)
    return jnp.clip(round_half_even(v, interpret=interpret), -qmax, qmax)


def quantize_chunks(chunks: list[jax.Array], q_ref, s_ref, rs_ref=None, *, interpret: bool = False) -> None:
    """Per-row symmetric quantization of a row block held as register tiles, into ``q_ref``'s code
    dtype (int8 or FP8 e4m3); ``rs_ref`` (optional, ``(rows, 1)`` int32) receives each row's code sum."""
    amax = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(c), axis=1, keepdims=True)
                                          for c in chunks])
    scale = amax / code_max(q_ref.dtype)
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale
    width = chunks[0].shape[1]
    total = None
    for i, c in enumerate(chunks):
        qf = codes(c / scale, q_ref.dtype, interpret=interpret)
        q_ref[:, pl.ds(i * width, width)] = qf.astype(q_ref.dtype)
        if rs_ref is not None:
            part = jnp.sum(qf.astype(jnp.int32), axis=1, keepdims=True)
            total = part if total is None else total + part
    if rs_ref is not None:
        rs_ref[...] = total


def _unrolled_kernel(x_ref, q_ref, s_ref, *rs, chunk: int, interpret: bool):
    quantize_chunks(load_chunks(x_ref, chunk), q_ref, s_ref, *rs, interpret=interpret)


def _kernel(x_ref, q_ref, s_ref, *rs, k: int, chunk: int, interpret: bool):
    bm = x_ref.shape[0]

    def amax_body(i, amax):
        sl = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
        blk = jnp.abs(x_ref[:, sl].astype(jnp.float32))
        return jnp.maximum(amax, jnp.max(blk, axis=1, keepdims=True))

    amax = lax.fori_loop(0, k // chunk, amax_body, jnp.zeros((bm, 1), jnp.float32))
    scale = amax / code_max(q_ref.dtype)
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale

    def quant_body(i, total):
        sl = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
        q = codes(x_ref[:, sl].astype(jnp.float32) / scale, q_ref.dtype, interpret=interpret)
        q_ref[:, sl] = q.astype(q_ref.dtype)
        return total + jnp.sum(q.astype(jnp.int32), axis=1, keepdims=True) if rs else total

    total = lax.fori_loop(0, k // chunk, quant_body, jnp.zeros((bm, 1), jnp.int32))
    if rs:
        rs[0][...] = total


@functools.partial(jax.jit, static_argnames=("cfg", "interpret", "row_sum", "dtype"))
def triton_quantize_per_token(
    x: jax.Array, *, cfg: QuantizeTiling = QuantizeTiling(), interpret: bool = False,
    row_sum: bool = False, dtype=jnp.int8,
) -> tuple[jax.Array, ...]:
    """``x (M, K)`` -> ``(codes (M, K), f32 (M, 1))`` (int8, or FP8 e4m3 with ``dtype``), plus the
    int32 code sums ``(M, 1)`` with ``row_sum``; K must have a power-of-two divisor >= 16."""
    check_row_sum(row_sum, dtype)
    m, k = x.shape
    chunk = fit_chunk(k, cfg.chunk)
    if not chunk:
        raise ValueError(f"K={k} has no power-of-two divisor >= 16")
    if cfg.unroll:
        body = functools.partial(_unrolled_kernel, chunk=chunk, interpret=interpret)
    else:
        body = functools.partial(_kernel, k=k, chunk=chunk, interpret=interpret)
    bm = rows_per_block(cfg.bm, chunk, cfg.tile_elems)
    mp = -(-m // bm) * bm
    xp = x if mp == m else jnp.pad(x, ((0, mp - m), (0, 0)))
    out_shape = [jax.ShapeDtypeStruct((mp, k), dtype), jax.ShapeDtypeStruct((mp, 1), jnp.float32)]
    out_specs = [pl.BlockSpec((bm, k), lambda i: (i, 0)), pl.BlockSpec((bm, 1), lambda i: (i, 0))]
    if row_sum:
        out_shape.append(jax.ShapeDtypeStruct((mp, 1), jnp.int32))
        out_specs.append(pl.BlockSpec((bm, 1), lambda i: (i, 0)))
    outs = pl.pallas_call(
        body,
        out_shape=tuple(out_shape),
        grid=(mp // bm,),
        in_specs=[pl.BlockSpec((bm, k), lambda i: (i, 0))],
        out_specs=tuple(out_specs),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(xp)
    return tuple(o[:m] for o in outs) if mp != m else tuple(outs)

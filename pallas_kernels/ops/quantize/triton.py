"""Pallas-Triton per-token quantization: one program quantizes ``bm`` full rows.

Two passes over the row block in power-of-two K chunks (the block is re-read from L1/L2 in the
second pass, so HBM sees ``x`` once): pass 1 computes ``max|x|`` per row, pass 2 writes
``clip(round(x / scale))`` as int8. Semantics: :mod:`pallas_kernels.ops.quantize.reference`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params
from pallas_kernels.ops.quantize.reference import QMAX


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


def quantize_chunks(chunks: list[jax.Array], q_ref, s_ref, *, interpret: bool = False) -> None:
    """Per-row symmetric int8 quantization of a row block held as register tiles."""
    amax = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(c), axis=1, keepdims=True)
                                          for c in chunks])
    scale = amax / QMAX
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale
    width = chunks[0].shape[1]
    for i, c in enumerate(chunks):
        q = jnp.clip(round_half_even(c / scale, interpret=interpret), -QMAX, QMAX).astype(jnp.int8)
        q_ref[:, pl.ds(i * width, width)] = q


def _unrolled_kernel(x_ref, q_ref, s_ref, *, chunk: int, interpret: bool):
    quantize_chunks(load_chunks(x_ref, chunk), q_ref, s_ref, interpret=interpret)


def _kernel(x_ref, q_ref, s_ref, *, k: int, chunk: int, interpret: bool):
    bm = x_ref.shape[0]

    def amax_body(i, amax):
        sl = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
        blk = jnp.abs(x_ref[:, sl].astype(jnp.float32))
        return jnp.maximum(amax, jnp.max(blk, axis=1, keepdims=True))

    amax = lax.fori_loop(0, k // chunk, amax_body, jnp.zeros((bm, 1), jnp.float32))
    scale = amax / QMAX
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale

    def quant_body(i, carry):
        sl = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
        q = round_half_even(x_ref[:, sl].astype(jnp.float32) / scale, interpret=interpret)
        q_ref[:, sl] = jnp.clip(q, -QMAX, QMAX).astype(jnp.int8)
        return carry

    lax.fori_loop(0, k // chunk, quant_body, 0)


@functools.partial(jax.jit, static_argnames=("cfg", "interpret"))
def triton_quantize_per_token(
    x: jax.Array, *, cfg: QuantizeTiling = QuantizeTiling(), interpret: bool = False
) -> tuple[jax.Array, jax.Array]:
    """``x (M, K)`` -> ``(int8 (M, K), f32 (M, 1))``; K must have a power-of-two divisor >= 16."""
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
    q, s = pl.pallas_call(
        body,
        out_shape=(jax.ShapeDtypeStruct((mp, k), jnp.int8),
                   jax.ShapeDtypeStruct((mp, 1), jnp.float32)),
        grid=(mp // bm,),
        in_specs=[pl.BlockSpec((bm, k), lambda i: (i, 0))],
        out_specs=(pl.BlockSpec((bm, k), lambda i: (i, 0)),
                   pl.BlockSpec((bm, 1), lambda i: (i, 0))),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(xp)
    return (q[:m], s[:m]) if mp != m else (q, s)

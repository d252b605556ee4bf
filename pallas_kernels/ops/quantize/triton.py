"""Pallas-Triton per-token quantization: one program quantizes ``bm`` full rows.

Two passes over the row block in power-of-two K chunks (the block is re-read from L1/L2 in the
second pass, so HBM sees ``x`` once): pass 1 computes ``max|x|`` per row, pass 2 writes
``clip(round(x / scale))`` as int8 (and, with ``row_sum=True``, the int32 sum of each row's codes,
reduced from the registers that hold them; with ``alpha``, the float32 ``u = scale · Σ_k q·alpha`` of a
rank-1 epilogue term, reduced the same way). Semantics: :mod:`pallas_kernels.ops.quantize.reference`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params
from pallas_kernels.ops.quantize.reference import FP8, check_alpha, check_row_sum, code_max


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


def alpha_part(qf: jax.Array, alpha_ref, start, width: int) -> jax.Array:
    """``Σ_k q[:, k] · alpha[k]`` over one ``(rows, width)`` chunk of codes at column ``start``
    (float32, ``(rows, 1)``)."""
    return jnp.sum(qf.astype(jnp.float32) * alpha_ref[:, pl.ds(start, width)], axis=1, keepdims=True)


def write_u(u_ref, us_ref, scale: jax.Array, dot: jax.Array) -> None:
    """``u = scale · (q · alpha)`` (times the per-row ``u_scale`` if given) into ``u_ref``."""
    u = scale * dot
    u_ref[...] = u if us_ref is None else u * us_ref[...]


def quantize_chunks(chunks: list[jax.Array], q_ref, s_ref, rs_ref=None, *, interpret: bool = False,
                    alpha_ref=None, us_ref=None, u_ref=None) -> None:
    """Per-row symmetric quantization of a row block held as register tiles, into ``q_ref``'s code
    dtype (int8 or FP8 e4m3); ``rs_ref`` (optional, ``(rows, 1)`` int32) receives each row's code sum;
    ``alpha_ref`` ``(1, K)`` (optional) makes ``u_ref`` ``(rows, 1)`` float32 receive
    ``scale · Σ_k q·alpha`` (times ``us_ref (rows, 1)`` if given)."""
    amax = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(c), axis=1, keepdims=True)
                                          for c in chunks])
    scale = amax / code_max(q_ref.dtype)
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale
    width = chunks[0].shape[1]
    total = dot = None
    for i, c in enumerate(chunks):
        qf = codes(c / scale, q_ref.dtype, interpret=interpret)
        q_ref[:, pl.ds(i * width, width)] = qf.astype(q_ref.dtype)
        if rs_ref is not None:
            part = jnp.sum(qf.astype(jnp.int32), axis=1, keepdims=True)
            total = part if total is None else total + part
        if alpha_ref is not None:
            part = alpha_part(qf, alpha_ref, i * width, width)
            dot = part if dot is None else dot + part
    if rs_ref is not None:
        rs_ref[...] = total
    if alpha_ref is not None:
        write_u(u_ref, us_ref, scale, dot)


def _refs(refs: tuple, row_sum: bool, has_alpha: bool, has_u_scale: bool) -> tuple:
    """``(x, [alpha], [u_scale], q, s, [row_sum], [u])`` -> ``(x, q, s, rs, alpha, u_scale, u)`` (``None``s)."""
    x_ref, *rest = refs
    alpha_ref = rest.pop(0) if has_alpha else None
    us_ref = rest.pop(0) if has_u_scale else None
    q_ref, s_ref, *rest = rest
    rs_ref = rest.pop(0) if row_sum else None
    u_ref = rest.pop(0) if has_alpha else None
    return x_ref, q_ref, s_ref, rs_ref, alpha_ref, us_ref, u_ref


def _unrolled_kernel(*refs, chunk: int, interpret: bool, layout: tuple[bool, bool, bool]):
    x_ref, q_ref, s_ref, rs_ref, alpha_ref, us_ref, u_ref = _refs(refs, *layout)
    quantize_chunks(load_chunks(x_ref, chunk), q_ref, s_ref, rs_ref, interpret=interpret, alpha_ref=alpha_ref,
                    us_ref=us_ref, u_ref=u_ref)


def _kernel(*refs, k: int, chunk: int, interpret: bool, layout: tuple[bool, bool, bool]):
    x_ref, q_ref, s_ref, rs_ref, alpha_ref, us_ref, u_ref = _refs(refs, *layout)
    bm = x_ref.shape[0]

    def amax_body(i, amax):
        sl = pl.ds(pl.multiple_of(i * chunk, chunk), chunk)
        blk = jnp.abs(x_ref[:, sl].astype(jnp.float32))
        return jnp.maximum(amax, jnp.max(blk, axis=1, keepdims=True))

    amax = lax.fori_loop(0, k // chunk, amax_body, jnp.zeros((bm, 1), jnp.float32))
    scale = amax / code_max(q_ref.dtype)
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    s_ref[...] = scale

    def quant_body(i, carry):
        total, dot = carry
        start = pl.multiple_of(i * chunk, chunk)
        sl = pl.ds(start, chunk)
        q = codes(x_ref[:, sl].astype(jnp.float32) / scale, q_ref.dtype, interpret=interpret)
        q_ref[:, sl] = q.astype(q_ref.dtype)
        if rs_ref is not None:
            total = total + jnp.sum(q.astype(jnp.int32), axis=1, keepdims=True)
        if alpha_ref is not None:
            dot = dot + alpha_part(q, alpha_ref, start, chunk)
        return total, dot

    total, dot = lax.fori_loop(0, k // chunk, quant_body,
                               (jnp.zeros((bm, 1), jnp.int32), jnp.zeros((bm, 1), jnp.float32)))
    if rs_ref is not None:
        rs_ref[...] = total
    if alpha_ref is not None:
        write_u(u_ref, us_ref, scale, dot)


@functools.partial(jax.jit, static_argnames=("cfg", "interpret", "row_sum", "dtype"))
def triton_quantize_per_token(
    x: jax.Array, *, cfg: QuantizeTiling = QuantizeTiling(), interpret: bool = False,
    row_sum: bool = False, dtype=jnp.int8, alpha: jax.Array | None = None, u_scale: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """``x (M, K)`` -> ``(codes (M, K), f32 (M, 1))`` (int8, or FP8 e4m3 with ``dtype``), plus the
    int32 code sums ``(M, 1)`` with ``row_sum``, plus ``u (M, 1)`` float32 with ``alpha (K,)``
    (``reference.token_dot``; ``u_scale (M,)`` multiplies it); K must have a power-of-two divisor >= 16."""
    check_row_sum(row_sum, dtype)
    check_alpha(alpha, u_scale, x.shape)
    m, k = x.shape
    chunk = fit_chunk(k, cfg.chunk)
    if not chunk:
        raise ValueError(f"K={k} has no power-of-two divisor >= 16")
    layout = (row_sum, alpha is not None, u_scale is not None)
    if cfg.unroll:
        body = functools.partial(_unrolled_kernel, chunk=chunk, interpret=interpret, layout=layout)
    else:
        body = functools.partial(_kernel, k=k, chunk=chunk, interpret=interpret, layout=layout)
    bm = rows_per_block(cfg.bm, chunk, cfg.tile_elems)
    mp = -(-m // bm) * bm
    pad = (lambda a: a) if mp == m else (lambda a: jnp.pad(a, ((0, mp - m), (0, 0))))  # noqa: E731
    row = pl.BlockSpec((bm, 1), lambda i: (i, 0))
    args, in_specs = [pad(x)], [pl.BlockSpec((bm, k), lambda i: (i, 0))]
    if alpha is not None:
        args.append(jnp.reshape(alpha, (1, k)).astype(jnp.float32))
        in_specs.append(pl.BlockSpec((1, k), lambda i: (0, 0)))
    if u_scale is not None:
        args.append(pad(jnp.reshape(u_scale, (m, 1)).astype(jnp.float32)))
        in_specs.append(row)
    out_shape = [jax.ShapeDtypeStruct((mp, k), dtype), jax.ShapeDtypeStruct((mp, 1), jnp.float32)]
    out_specs = [pl.BlockSpec((bm, k), lambda i: (i, 0)), row]
    if row_sum:
        out_shape.append(jax.ShapeDtypeStruct((mp, 1), jnp.int32))
        out_specs.append(row)
    if alpha is not None:
        out_shape.append(jax.ShapeDtypeStruct((mp, 1), jnp.float32))
        out_specs.append(row)
    outs = pl.pallas_call(
        body,
        out_shape=tuple(out_shape),
        grid=(mp // bm,),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return tuple(o[:m] for o in outs) if mp != m else tuple(outs)

"""Pallas-Triton W4A8 GEMM: int8 activations x packed int4 weights, unpacked in registers.

The activations arrive de-interleaved along K (``[even k | odd k]``, done by the quantizing
producer), so each packed weight tile ``(bn, bkp)`` splits into two int8 nibble planes that meet
two contiguous activation tiles: ``acc += A_even @ lo^T + A_odd @ hi^T`` (s8 tensor-core dots).
Per-group scales are applied in float32 after each group's int32 partial sum.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, triton_compiler_params
from pallas_kernels.ops.int8_matmul.reference import NT_DIMS
from pallas_kernels.ops.int8_matmul.triton import TritonGemmConfig, epilogue, pad_rows, rank1_operands
from pallas_kernels.ops.w4a8_linear.packing import deinterleave_k, unpack_int4, unpack_nibbles


def fit_w4_config(
    cfg: TritonGemmConfig, m: int, k: int, n: int, group_size: int | None, packed: bool = True
) -> TritonGemmConfig | None:
    """The tiling for ``(M, K) x (N, K)``: the weight tile width (``bkp = cfg.bk // 2`` packed bytes,
    or ``cfg.bk`` int8 columns for ``packed=False``) must divide the weight row (and the group:
    ``group_size/2`` bytes or ``group_size`` columns) and be >= 32, ``bn`` (>= 16) must divide N;
    ``None`` when no such tiling exists."""
    span = k if group_size is None else group_size
    span, width = (span // 2, cfg.bk // 2) if packed else (span, cfg.bk)
    bn = cfg.bn
    # the int8 dot's K (``width``) must be >= 32: on an H100 (gpu_check group_act, 2026-12-06) 16-byte packed
    # tiles (int4 groups of 32 and 288) gave wrong sums, every width >= 32 was exact
    while width >= 32 and span % width:
        width //= 2
    while bn >= 16 and n % bn:
        bn //= 2
    if width < 32 or bn < 16:
        return None
    bm = cfg.bm
    while bm > 16 and bm >= 2 * max(m, 16):
        bm //= 2
    return TritonGemmConfig(bm=bm, bn=bn, bk=2 * width if packed else width, num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, k: int, bkp: int, n_groups: int,
            has_bias: bool, has_zp: bool = False, has_rank1: bool = False):
    o_ref, rest = rest[-1], list(rest[:-1])
    b_ref = rest.pop(0) if has_bias else None
    zw_ref, rs_ref = (rest.pop(0), rest.pop(0)) if has_zp else (None, None)
    u_ref, beta_ref = rest if has_rank1 else (None, None)  # the rank-1 term (int8_matmul.reference.rank1_ref)
    r1 = {"u_ref": u_ref, "beta": None if beta_ref is None else beta_ref[...]}
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
        epilogue(acc, xs_ref, ws_ref[...], b_ref, o_ref, zw=None if zw_ref is None else zw_ref[...], rs_ref=rs_ref,
                 **r1)
        return

    def group(g, accf):
        start = g * tiles_per_group
        acc = lax.fori_loop(start, start + tiles_per_group, tile, zeros)
        return accf + acc.astype(jnp.float32) * ws_ref[pl.ds(g, 1), :]

    accf = lax.fori_loop(0, n_groups, group, jnp.zeros((bm, bn), jnp.float32))
    epilogue(accf, xs_ref, None, b_ref, o_ref, **r1)


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
    rank1: tuple | None = None,
) -> jax.Array:
    """``xq_deint (M, K)`` int8 (K de-interleaved), ``w_packed (N, K//2)`` uint8/int8,
    ``w_scale (N,)`` or ``(N, G)`` -> ``(M, N)`` out_dtype; per-channel scales may come with zero
    points ``w_zero (N,)`` and the code sums ``x_row_sum (M,)`` (int32 term in the epilogue);
    ``rank1=(u (M,), beta (N,))`` adds ``u[m] · beta[n]`` after the bias."""
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
    if rank1 is not None:
        for a, spec in rank1_operands(rank1, bm, pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
                                      pl.BlockSpec((1, bn), lambda i, j: (0, j))).values():
            args.append(a)
            in_specs.append(spec)
    out = pl.pallas_call(
        functools.partial(_kernel, k=k, bkp=bkp, n_groups=n_groups, has_bias=bias is not None,
                          has_zp=has_zp, has_rank1=rank1 is not None),
        out_shape=jax.ShapeDtypeStruct((mp, n), jnp.dtype(out_dtype)),
        grid=(mp // bm, n // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return out[:m] if mp != m else out


# ------------------------------------------------------------------------------------------------
# per-token-per-group activations (Q-DiT): the same K loop, scales and zero points of both sides per group
# ------------------------------------------------------------------------------------------------

# Optional operands of the group GEMM, in argument order after (x, w, xs, ws).
GROUP_OPERANDS = ("bias", "x_zero", "w_corr", "x_sum", "w_zero")
UNPACK_MODES = ("xla", "kernel")


@dataclasses.dataclass(frozen=True)
class GroupTiling(TritonGemmConfig):
    """Tiling of :func:`triton_group_gemm` (``configs.json`` table ``triton_group``): the GEMM tiling
    (``bk`` = K values per dot step, a divisor of the group) plus
    ``unpack`` (packed int4 weights only): ``"xla"`` = XLA unpacks the nibbles to int8 before the kernel
    and folds the weight zero points into them (``q + z`` is within [-15, 15]), so the kernel runs plain
    s8 x s8 dots on activations in natural K order with one int32 zero-point term per group;
    ``"kernel"`` = the nibbles are split in registers (K de-interleaved activations, two dots per step,
    both int32 zero-point terms). ``skew``: the epilogue of group ``g`` (int32 zero-point terms, float
    scaling) is written after the dots of group ``g + 1``, so the MMAs may run under it."""

    unpack: str = "xla"
    skew: bool = False

    def __post_init__(self):
        if self.unpack not in UNPACK_MODES:
            raise ValueError(f"GroupTiling.unpack={self.unpack!r}; allowed: {', '.join(UNPACK_MODES)}")

    def unpacks_in_kernel(self, packed: bool) -> bool:
        return packed and self.unpack == "kernel"


def fit_group_tiling(cfg: GroupTiling, m: int, k: int, n: int, group_size: int, packed: bool) -> GroupTiling | None:
    """``cfg`` shrunk to the shape (:func:`fit_w4_config` on the operand the kernel sees: packed bytes when
    ``cfg`` unpacks in the kernel, int8 columns otherwise); ``None`` when no tiling fits."""
    if k % group_size:
        return None
    fit = fit_w4_config(cfg, m, k, n, group_size, packed=cfg.unpacks_in_kernel(packed))
    return None if fit is None else dataclasses.replace(cfg, bm=fit.bm, bn=fit.bn, bk=fit.bk)


def _group_kernel(x_ref, w_ref, xs_ref, ws_ref, *rest, k: int, bk: int, n_groups: int, packed: bool,
                  present: tuple[str, ...], skew: bool = False):
    """One ``(bm, bn)`` output tile: per group ``g`` an int32 partial sum over the group's K tiles, its
    zero-point terms ``x_zero[:, g] · w_corr[g, :] + x_sum[:, g] · w_zero[g, :]`` in int32, then
    ``+= acc · x_scale[:, g] · w_scale[g, :]`` in float32; bias last. ``skew``: group ``g``'s epilogue
    follows the dots of group ``g + 1`` (two int32 accumulators live)."""
    o_ref = rest[-1]
    ops = dict(zip(present, rest[:-1]))
    bm, bn = o_ref.shape
    half = k // 2
    tiles_per_group = (half if packed else k) // n_groups // bk

    def tile(j, acc):
        off = pl.multiple_of(j * bk, bk)
        if not packed:
            return acc + lax.dot_general(x_ref[:, pl.ds(off, bk)], w_ref[:, pl.ds(off, bk)], NT_DIMS,
                                         preferred_element_type=jnp.int32)
        lo, hi = unpack_nibbles(w_ref[:, pl.ds(off, bk)])
        acc = acc + lax.dot_general(x_ref[:, pl.ds(off, bk)], lo, NT_DIMS, preferred_element_type=jnp.int32)
        return acc + lax.dot_general(x_ref[:, pl.ds(half + off, bk)], hi, NT_DIMS,
                                     preferred_element_type=jnp.int32)

    def group_sum(g):
        start = g * tiles_per_group
        return lax.fori_loop(start, start + tiles_per_group, tile, jnp.zeros((bm, bn), jnp.int32))

    def scaled(g, acc):
        col, row = pl.ds(g, 1), pl.ds(g, 1)
        if "x_zero" in ops:
            acc = acc + ops["x_zero"][:, col] * ops["w_corr"][row, :]
        if "w_zero" in ops:
            acc = acc + ops["x_sum"][:, col] * ops["w_zero"][row, :]
        return acc.astype(jnp.float32) * (xs_ref[:, col] * ws_ref[row, :])

    zeros = jnp.zeros((bm, bn), jnp.float32)
    if skew and n_groups > 1:
        def body(g, carry):
            accf, prev = carry
            nxt = group_sum(g)
            return accf + scaled(g - 1, prev), nxt

        accf, last = lax.fori_loop(1, n_groups, body, (zeros, group_sum(0)))
        y = accf + scaled(n_groups - 1, last)
    else:
        y = lax.fori_loop(0, n_groups, lambda g, accf: accf + scaled(g, group_sum(g)), zeros)
    if "bias" in ops:
        y = y + ops["bias"][...]
    o_ref[...] = y.astype(o_ref.dtype)


def fold_weights(w: jax.Array, w_zero: jax.Array | None, n_groups: int) -> jax.Array:
    """Packed int4 ``w (N, K//2)`` -> int8 ``(N, K)`` codes ``q + w_zero[:, g]`` (``w_zero`` ``(N, G)`` in
    [-120, 119], as every int4 zero point [-7, 8] is: the sum stays within int8)."""
    q = unpack_int4(w)
    if w_zero is None:
        return q
    n, k = q.shape
    return (q.reshape(n, n_groups, k // n_groups) + w_zero.astype(jnp.int8)[..., None]).reshape(n, k)


@functools.partial(jax.jit, static_argnames=("cfg", "out_dtype", "interpret"))
def triton_group_gemm(
    xq: jax.Array,
    w: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    x_zero: jax.Array | None = None,
    w_zero: jax.Array | None = None,
    cfg: GroupTiling,
    out_dtype: jnp.dtype = jnp.bfloat16,
    interpret: bool = False,
) -> jax.Array:
    """``xq (M, K)`` int8 codes (natural K order) with ``x_scale (M, G)`` / ``x_zero (M, G)`` per token
    and group, ``w`` packed int4 uint8 ``(N, K//2)`` or int8 ``(N, K)`` with ``w_scale (N, G)`` /
    ``w_zero (N, G)`` -> ``(M, N)`` (semantics: ``reference.group_gemm_ref``). The zero-point terms'
    int32 code sums per group (``x_sum (M, G)``, ``w_corr = Σ w + |g|·w_zero (N, G)``) are reduced
    here by XLA; ``cfg`` from :func:`fit_group_tiling` (``packed`` as ``w``). With ``cfg.unpack ==
    "xla"`` packed weights arrive unpacked with ``w_zero`` folded in (:func:`fold_weights`): no
    ``x_sum``/``w_zero`` operands."""
    m, k = xq.shape
    n, g = w_scale.shape
    gs = k // g
    packed = w.dtype == jnp.uint8
    if packed and not cfg.unpacks_in_kernel(packed):
        w, w_zero, packed = fold_weights(w, w_zero, g), None, False
    bm, bn = cfg.bm, cfg.bn
    bk = cfg.bk // 2 if packed else cfg.bk
    if packed:
        lo, hi = unpack_nibbles(w)
        w_sums = (jnp.sum(lo.astype(jnp.int32).reshape(n, g, gs // 2), -1)
                  + jnp.sum(hi.astype(jnp.int32).reshape(n, g, gs // 2), -1))
        x_in = deinterleave_k(xq)
        w_in = lax.bitcast_convert_type(w, jnp.int8)
    else:
        w_sums = jnp.sum(w.astype(jnp.int32).reshape(n, g, gs), -1)
        x_in, w_in = xq, w
    rows = lambda i, j: (i, 0)  # noqa: E731
    cols = lambda i, j: (0, j)  # noqa: E731
    args = [pad_rows(x_in, bm), w_in, pad_rows(x_scale.astype(jnp.float32), bm), w_scale.T.astype(jnp.float32)]
    in_specs = [pl.BlockSpec((bm, k), rows), pl.BlockSpec((bn, w.shape[1]), lambda i, j: (j, 0)),
                pl.BlockSpec((bm, g), rows), pl.BlockSpec((g, bn), cols)]
    present = []
    extra = {
        "bias": None if bias is None else (jnp.reshape(bias, (1, -1)).astype(jnp.float32), (1, bn), cols),
        "x_zero": None if x_zero is None else (x_zero.astype(jnp.int32), (bm, g), rows),
        "w_corr": None if x_zero is None else (
            (w_sums + (0 if w_zero is None else gs * w_zero.astype(jnp.int32))).T, (g, bn), cols),
        "x_sum": None if w_zero is None else (
            jnp.sum(xq.astype(jnp.int32).reshape(m, g, gs), -1), (bm, g), rows),
        "w_zero": None if w_zero is None else (w_zero.astype(jnp.int32).T, (g, bn), cols),
    }
    for name in GROUP_OPERANDS:
        if extra[name] is not None:
            a, block, index = extra[name]
            args.append(pad_rows(a, bm) if index is rows else a)
            in_specs.append(pl.BlockSpec(block, index))
            present.append(name)
    mp = args[0].shape[0]
    out = pl.pallas_call(
        functools.partial(_group_kernel, k=k, bk=bk, n_groups=g, packed=packed, present=tuple(present),
                          skew=cfg.skew),
        out_shape=jax.ShapeDtypeStruct((mp, n), jnp.dtype(out_dtype)),
        grid=(mp // bm, n // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return out[:m] if mp != m else out

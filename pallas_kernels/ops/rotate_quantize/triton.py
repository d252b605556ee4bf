"""Pallas-Triton "smooth + randomized Hadamard + per-token int8": one HBM read of bf16 ``x``, one
int8 write, the rotation in registers / on the tensor cores. Semantics: ``reference.py``.

``K = b · p`` (``b`` = order of the caller's base ``H_b``, ``p = 2^k``), channel ``i = i_b·p + i_p``,
so a token row is a ``(b, p)`` matrix ``X`` and its rotation is ``Y = H_bᵀ X H_p / sqrt(K)``.

What Pallas-Triton can lower decides the shape of the kernels (``jax/_src/pallas/triton/lowering.py``,
checked by lowering for CUDA on a CPU host and compiling the Triton IR for sm_90 with Triton's own
compiler; see ``NOTES.md`` of this folder):

* every tensor has power-of-two dimensions (so no ``(bm, 1152)`` or ``(36, p)`` register tile),
  ``dot`` is 2-D only with every dimension >= 16, there is no static slice of a register tensor,
  ``concatenate`` only joins two ``[..., 1]`` arrays, ``split`` is power-of-two and equal-sized;
* loads/stores take any ``pl.ds`` window of a ref (masked: outside rows are neither read nor
  written), so a non-power-of-two axis is covered by power-of-two *groups* of rows
  (36 = 32 + 16 with the last 12 rows masked), and the kernel keeps one register tensor per group;
* ``transpose``/``reshape`` of 3-D tensors lower (``tt.trans``/``tt.reshape``) but cost a layout
  conversion through shared memory; the main paths (K = 1152, 4608) avoid them.

Two variants (``RotateTiling.variant``):

``"mma"`` (the default; option (a): the base as a zero-padded dot)
    One token row (``rows_per_tile`` rows side by side when ``p < 16``) is held as tiles
    ``T[h][g] = X[row group g, h-th block of w columns]``, loaded straight from the ``(M, b, p)``
    view. ``H_b`` is a tensor-core dot with the *constant* as left operand, ``Z = H_b,padᵀ @ T``
    (one exact bf16 operand when there is no smoothing: ``x · signs`` is bf16); the ``p/w`` column
    blocks are mixed by butterflies *across* tiles (elementwise, no data movement); the last ``w``
    Sylvester factor is a second dot ``Z @ H_w`` chained on the accumulator (flash-attention style,
    no layout change). ``grow`` enlarges the base to ``H_b ⊗ H_grow`` (36 -> 72 -> 144 rows) so
    that less of it is zero padding (48/36 -> 80/72 -> 144/144) for more base MACs.
``"fma"`` (option (b): ±1 accumulations)
    ``bm`` token rows as ``b`` chunks ``(bm, p)`` (the quantizer's layout); ``H_p`` is a dot per
    chunk (``bm >= 16``), ``H_b`` is evaluated on the CUDA cores as signed sums of whole chunks,
    ``b_group`` columns at a time so that rows where the columns agree share partial sums
    (``b/2`` adds per output element for pairs instead of ``b - 1``). It needs ``bm · K`` floats of
    registers per program, spills, and takes ~60 s to compile: kept as the measured alternative.

Float32 dot operands (the intermediate ``Z``; with smoothing or float32 ``x`` also the input) are
cut into 16-bit parts (``RotateTiling.split``, see :data:`SPLITS`; the ±1 matrices are exact in
bf16 and fp16, products are exact and accumulated in float32), so the result differs from the
float32 reference by summation order only: rare ±1 rounding flips of the int8 values (bounded in
the tests). The per-token absmax, ``scale = absmax / sqrt(K) / 127`` and
``q = cvt.rni.s32(y · 127 / absmax)`` (``lax.round`` in interpret mode) follow in registers.

Switches that cut instructions per element (``RotateTiling``, off by default; static counts in
``NOTES.md``): ``pack_int8`` (codes rounded and packed four to a register in PTX), ``hoist_ms`` (the
signs loaded once per program), ``prescale`` (the fp16-range power of two applied to the bf16 input
with the signs, not to the float32 intermediate), ``merge_absmax`` (one row reduction per tile
shape); with ``unroll=False`` and ``bm`` rows a program keeps the base across its rows.
Switches against latency (off by default; ``NOTES.md``, "Latency and occupancy"): ``prefetch``
(the next row's x tiles are loaded before this row's math) and ``programs`` (a persistent grid
that strides over the row tiles: no wave tail, the base staged once per program).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params
from pallas_kernels.ops.quantize.reference import FP8, check_row_sum, code_max
from pallas_kernels.ops.rotate_quantize.reference import check_prenorm, split_order, sylvester

VARIANTS = ("mma", "fma")
# How a float32 dot operand becomes 16-bit tensor-core operands (the ±1 matrices are exact in both
# bf16 and fp16, products are exact, accumulation is float32):
#   "bf16x3": three bf16 parts (8 + 8 + 8 mantissa bits: float32-exact), three dots;
#   "f16x2":  the row is scaled by a power of two into [2^14, 2^15) (fp16 range, exact), then two
#             fp16 parts (11 + 11 bits, error <= 2^-22 relative), two dots; rows of 1 tile only
#             (rows_per_tile > 1 falls back to bf16x3);
#   "bf16x2": two bf16 parts (16 bits, error <= 2^-17: int8 flips ~1e-4, scale error ~1e-6).
SPLITS = ("f16x2", "bf16x3", "bf16x2")
MIN_DOT = 16  # smallest dot dimension Triton accepts


@dataclasses.dataclass(frozen=True)
class RotateTiling:
    """Static kernel choices (hashable: a ``jax.jit`` static argument)."""

    variant: str = "mma"
    bm: int = 0  # token rows per program; 0 = rows_per_tile (mma) / 16 (fma)
    w: int = 32  # mma: Sylvester width done as the chained dot (the rest: butterflies across tiles)
    rows_per_tile: int = 0  # mma: rows side by side in one tile; 0 = max(1, 16 // w)
    grow: int = 1  # mma: base H_b ⊗ H_grow (less zero padding of the base, more base MACs)
    unroll: bool = True  # mma: row tiles of a program as straight-line code (else a fori_loop)
    pad_block: bool = False  # mma: blocks span the zero-padded base (True), or are exactly
    #   (bm, b, p) and the masked windows past b start at a traced offset (no static bounds check)
    b_group: int = 2  # fma: base columns evaluated together (1 = plain signed sums)
    split: str = "f16x2"  # float32 dot operands: "f16x2" | "bf16x3" | "bf16x2" (see SPLITS)
    pack_int8: bool = False  # mma: round and pack 4 codes per register in PTX (cvt.rni +
    #   cvt.pack.sat.s8), instead of an int32 -> int8 truncation (byte permutes)
    hoist_ms: bool = False  # mma: load the per-channel multiplier once per program (rows loop)
    prescale: bool = False  # mma f16x2, bf16 x: the power of two that brings Z into the fp16 range
    #   multiplies x in bf16 (exact, with the signs) instead of Z in float32
    merge_absmax: bool = False  # mma: same-shape tiles maxed elementwise before the row reductions
    prefetch: bool = False  # mma, bm > rows_per_tile: software pipeline of the row loop, the next row
    #   tile's x loads are issued before this row's math (one more row of registers, its HBM latency
    #   hidden under the math; unrolled or fori_loop with the tiles as carry)
    programs: int = 0  # mma: 0 = one program per bm rows; > 0 = a grid of min(programs, row tiles)
    #   programs, program i doing row tiles i, i + programs, ... (no wave tail at any M: pick
    #   ~ SMs x resident programs per SM; the last step of a short program redoes the last tile,
    #   writing the same values); bm then only pads M
    hoist_pn: bool = False  # mma, prenorm: the LayerNorm affine (a, c) loaded once per program when its rows
    #   share one group (2 float32 registers per element per lane, kept across the rows: spills at
    #   K = 4608), else per row (L1 hits after the first row)
    pn_two_pass: bool = False  # mma, prenorm: LayerNorm variance as Σ(x - mean)² (the reference's order, a
    #   second pass over the registers) instead of Σx²/K - mean² from the same pass as the mean
    num_warps: int = 4
    num_stages: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "RotateTiling":
        """A stored ``configs.json`` row (fields it does not know, e.g. notes, are left out)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def _pow2(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


def row_groups(b: int) -> tuple[tuple[int, int, int], ...]:
    """Cover ``range(b)`` by power-of-two windows ``(start, size, valid)`` with ``size >= 16``:
    36 -> ((0, 32, 32), (32, 16, 4)); 12 -> ((0, 16, 12),); 108 -> 64 + 32 + 16 (12 valid)."""
    out, start = [], 0
    while start < b:
        rem = b - start
        size = max(MIN_DOT, 1 << (rem.bit_length() - 1))
        out.append((start, size, min(size, rem)))
        start += size
    return tuple(out)


def effective_base(h_base: np.ndarray, p: int, grow: int = 1) -> tuple[np.ndarray, int]:
    """Grow the base with Sylvester factors, ``H_b ⊗ H_p = (H_b ⊗ H_f) ⊗ H_{p/f}`` (natural
    order), by ``f >= grow`` and until it has >= 16 rows (a dot dimension) or ``p`` is used up.
    A larger base wastes less of its zero-padded last row group (36 -> 48 rows, 72 -> 80,
    144 -> 144) for more base MACs."""
    hb, f = np.asarray(h_base, np.float32), 1
    while (f < grow or hb.shape[0] * f < MIN_DOT) and p // f > 1:
        f *= 2
    return (np.kron(hb, sylvester(f)) if f > 1 else hb), p // f


def mma_shape(p: int, cfg: RotateTiling) -> tuple[int, int, int]:
    """``(w, rows_per_tile, bm)`` of the mma variant for a (grown) Sylvester order ``p``."""
    w = min(cfg.w, p)
    rb = cfg.rows_per_tile or max(1, MIN_DOT // w)
    return w, rb, cfg.bm or rb


def supported(k: int, h_base, cfg: RotateTiling) -> str | None:
    """``None`` if the variant can run this shape, else the reason (the dispatch falls back)."""
    try:
        b, p = split_order(k, h_base)
    except ValueError as e:
        return str(e)
    if cfg.variant not in VARIANTS:
        return f"unknown variant {cfg.variant!r}"
    if cfg.split not in SPLITS:
        return f"split must be one of {SPLITS}"
    if cfg.variant == "fma":
        if p < MIN_DOT:
            return f"fma needs p >= {MIN_DOT} (K={k} = {b}·{p})"
        if cfg.bm and (cfg.bm < MIN_DOT or not _pow2(cfg.bm)):
            return f"fma needs bm a power of two >= {MIN_DOT}"
        return None
    hb, p = effective_base(np.asarray(h_base), p, cfg.grow)
    w, rb, bm = mma_shape(p, cfg)
    if not (_pow2(w) and _pow2(rb)) or w * rb < MIN_DOT:
        return f"mma needs w·rows_per_tile >= {MIN_DOT} (w={w}, rows_per_tile={rb})"
    if hb.shape[0] < MIN_DOT:
        return f"base order {hb.shape[0]} < {MIN_DOT} and p too small to grow it"
    if bm % rb:
        return f"bm={bm} is not a multiple of rows_per_tile={rb}"
    if cfg.programs < 0:
        return f"programs={cfg.programs} must be >= 0 (0 = one program per bm rows)"
    return None


def block_rows(k: int, h_base, cfg: RotateTiling) -> int:
    """Token rows per program (the grid step) of this tiling at this K."""
    if cfg.variant == "fma":
        return cfg.bm or MIN_DOT
    _, p = effective_base(np.asarray(h_base), split_order(k, h_base)[1], cfg.grow)
    return mma_shape(p, cfg)[2]


def _pieces(v: jax.Array, split: str) -> list[jax.Array]:
    """float32 ``v`` -> 16-bit parts summing to ``v`` (to the precision of ``split``), the
    smallest first (``f16x2`` expects ``v`` already scaled into the fp16 range)."""
    if split == "f16x2":
        hi = v.astype(jnp.float16)
        return [(v - hi.astype(jnp.float32)).astype(jnp.float16), hi]
    out = []
    for i in range(3 if split == "bf16x3" else 2):
        hi = v.astype(jnp.bfloat16)
        out.append(hi)
        v = v - hi.astype(jnp.float32)
    return out[::-1]


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_split(a: jax.Array, b: jax.Array, split: str, split_lhs: bool) -> jax.Array:
    """``a @ b`` with the float32 operand cut into 16-bit parts (the other one is a ±1/0
    constant of the matching 16-bit type)."""
    acc = None
    for part in _pieces(a if split_lhs else b, split):
        d = _dot(part, b) if split_lhs else _dot(a, part)
        acc = d if acc is None else acc + d
    return acc


def pow2_scale(amax: jax.Array, top: int = 14) -> jax.Array:
    """A power of two ``s`` with ``amax · s`` in ``[2^top, 2^(top+1))`` (from the float32 exponent
    bits; clamped to a finite float for tiny or zero ``amax``)."""
    e = lax.shift_right_logical(lax.bitcast_convert_type(amax, jnp.int32), jnp.int32(23))
    bits = jnp.clip(jnp.int32(254 + top) - e, 1, 254)
    return lax.bitcast_convert_type(lax.shift_left(bits, jnp.int32(23)), jnp.float32)


def _row_reduce(tiles, combine, reduce, axes: int = 2, merge: bool = True):
    """``combine`` over every tile's elements, reduced along its last ``axes`` axes by ``reduce`` (rows of a
    one-row tile set: a scalar). ``merge``: tiles of one shape are combined elementwise first (one
    cross-thread reduction per shape, not per tile; more live registers)."""
    parts: dict = {}
    for i, t in enumerate(tiles):
        key = t.shape if merge else i
        parts[key] = t if key not in parts else combine(parts[key], t)
    total = None
    for a in parts.values():
        for _ in range(axes):
            a = reduce(a, axis=-1)
        total = a if total is None else combine(total, a)
    return total


def _row_sum(tiles):
    """Sum of every tile's elements, same-shape tiles added elementwise first (:func:`_row_reduce`)."""
    return _row_reduce(tiles, jnp.add, jnp.sum)


def _row_absmax(tiles, merge: bool = False):
    """Max of |t| over every tile (:func:`_row_reduce`; ``merge``: same-shape tiles maxed first)."""
    return _row_reduce([jnp.abs(t) for t in tiles], jnp.maximum, jnp.max, merge=merge)


def round_to_int32(v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Round-half-even float32 -> int32 in one PTX ``cvt.rni.s32.f32`` (a ``round`` followed by
    ``astype(int32)`` costs a rounding, two clamps and a conversion per element); interpret mode:
    ``lax.round`` + cast, the same values for |v| < 2^31."""
    if interpret:
        return lax.round(v, lax.RoundingMethod.TO_NEAREST_EVEN).astype(jnp.int32)
    (r,) = pltriton.elementwise_inline_asm(
        "cvt.rni.s32.f32 $0, $1;", args=[v], constraints="=r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)])
    return r


def round_to_int8(v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Round-half-even float32 -> int8 for ``|v| <= 127.5``: four ``cvt.rni.s32.f32`` and two
    ``cvt.pack.sat.s8.s32.b32`` per four values, the codes leave packed 4 to a register (no
    int32 -> int8 byte permutes); interpret mode: ``lax.round`` + cast."""
    if interpret:
        return lax.round(v, lax.RoundingMethod.TO_NEAREST_EVEN).astype(jnp.int8)
    (r,) = pltriton.elementwise_inline_asm(
        "{ .reg .s32 a, b, c, d, t;\n"
        "cvt.rni.s32.f32 a, $1; cvt.rni.s32.f32 b, $2;\n"
        "cvt.rni.s32.f32 c, $3; cvt.rni.s32.f32 d, $4;\n"
        "cvt.pack.sat.s8.s32.b32 t, d, c, 0;\n"
        "cvt.pack.sat.s8.s32.b32 $0, b, a, t; }",
        args=[v], constraints="=r,r,r,r,r", pack=4,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int8)])
    return r


def _quantize(ys, amax, inv_sqrt_k: float, interpret: bool, dtype=jnp.int8, pack: bool = False):
    """Per-token scale and int8 values of row-aligned float32 tiles given their absmax
    (broadcastable against each tile). ``|y| <= amax`` makes ``|y · (127 / amax)| <= 127·(1 + 2⁻²³)``,
    which rounds into [-127, 127]: no clip, and the int32 -> int8 step is a plain truncation
    (a float -> int8 conversion would clamp to [-128, 127] again, 4 extra ops per element).
    The values come back as int32 (the callers sum them for the code row sums, then truncate),
    or as int8 with ``pack`` (:func:`round_to_int8`).
    FP8 codes (``dtype``): ``e4m3(y · (448 / amax))`` (RTNE; ``cvt.rn.satfinite`` keeps the
    ``448·(1 + 2⁻²³)`` edge at 448, as XLA's conversion does)."""
    qmax = code_max(dtype)
    scale = amax * jnp.float32(inv_sqrt_k) / qmax
    scale = jnp.where(amax > 0, scale, jnp.float32(1.0))
    mult = jnp.where(amax > 0, qmax / amax, jnp.float32(0.0))
    if jnp.dtype(dtype) == FP8:
        return scale, [(y * mult).astype(FP8) for y in ys]
    rnd = round_to_int8 if pack else round_to_int32
    qs = [rnd(y * mult, interpret=interpret) for y in ys]
    return scale, qs


def _tile_sums(tiles, axes: int):
    """Σ of int32 tiles over their ``axes`` trailing axes, summed over the list."""
    total = None
    for t in tiles:
        for _ in range(axes):
            t = jnp.sum(t, axis=-1)
        total = t if total is None else total + t
    return total


def _butterflies(tiles: list) -> list:
    """Unnormalised natural-order Walsh–Hadamard transform across a list of equal tiles."""
    n, h = len(tiles), 1
    tiles = list(tiles)
    while h < n:
        for s in range(0, n, 2 * h):
            for i in range(s, s + h):
                a, c = tiles[i], tiles[i + h]
                tiles[i], tiles[i + h] = a + c, a - c
        h *= 2
    return tiles


# --------------------------------------------------------------------------------------------
# "mma": base and last Sylvester factor on the tensor cores, the middle factor across tiles
# --------------------------------------------------------------------------------------------


def _mma_kernel(*refs, groups, w, rb, nh, has_ms, split_in, split, inv_sqrt_k, unroll,
                pad_block, interpret, row_sum=False, dtype=jnp.int8, pack_int8=False,
                hoist_ms=False, prescale=False, merge_absmax=False, prefetch=False, programs=0,
                steps=0, last_tile=0, ms_unit=True, pn_rows=0, pn_eps=1e-6, k_true=0, hoist_pn=False,
                pn_two_pass=False):
    rs_ref = None
    if row_sum:
        *refs, rs_ref = refs
    pn = pn_rows > 0  # LayerNorm + per-group affine prologue (prenorm), rounded to bf16
    if pn:
        x_ref, a_ref, c_ref, hbt_ref, hw_ref, q_ref, s_ref = refs
    elif has_ms:
        x_ref, ms_ref, hbt_ref, hw_ref, q_ref, s_ref = refs
    else:
        x_ref, hbt_ref, hw_ref, q_ref, s_ref = refs
    bm, b = x_ref.shape[0], groups[-1][0] + groups[-1][2]
    if rb > 1 and split == "f16x2":  # the per-row power-of-two scale needs one row per tile
        split = "bf16x3"
    half = jnp.float16 if split == "f16x2" else jnp.bfloat16
    hw = hw_ref[...]  # (rb·w, rb·w): kron(I_rb, H_w), ±1/0
    # hbt[j-group][i-group]: (J, G) blocks of the zero-padded H_bᵀ
    hbt = [[hbt_ref[pl.ds(j0, js), pl.ds(g0, gs)] for (g0, gs, _) in groups]
           for (j0, js, _) in groups]
    if split_in:
        hbt = [[blk.astype(half) for blk in row] for row in hbt]
    hw = hw.astype(half)

    def mask(g, shape, axis):
        _, size, valid = groups[g]
        if valid == size:
            return None
        return lax.broadcasted_iota(jnp.int32, shape, axis) < valid

    def start(g):
        g0, gs, valid = groups[g]
        if not pad_block and valid < gs:  # a traced start: no static out-of-bounds check
            return jnp.asarray(g0, jnp.int32)
        return g0

    def window(ref, r0, g, h):
        g0, gs = start(g), groups[g][1]
        if rb == 1:
            return ref.at[r0, pl.ds(g0, gs), pl.ds(h * w, w)]
        return ref.at[pl.ds(r0, rb), pl.ds(g0, gs), pl.ds(h * w, w)]

    def load(ref, m):
        return pltriton.load(ref) if m is None else pltriton.load(ref, mask=m, other=0.0)

    def win_shape(g):
        gs = groups[g][1]
        return ((gs, w), 0) if rb == 1 else ((rb, gs, w), 1)

    def to_tile(v):  # (rb, G, w) -> (G, rb·w); rb == 1 is already (G, w)
        if rb == 1:
            return v
        return jnp.transpose(v, (1, 0, 2)).reshape(v.shape[1], rb * w)

    def from_tile(v):  # (J, rb·w) -> (rb, J, w)
        if rb == 1:
            return v
        return jnp.transpose(v.reshape(v.shape[0], rb, w), (1, 0, 2))

    def load_ms(g, h):
        gs = groups[g][1]
        return load(ms_ref.at[pl.ds(start(g), gs), pl.ds(h * w, w)], mask(g, (gs, w), 0))

    ms_tiles = ([[load_ms(g, h) for g in range(len(groups))] for h in range(nh)]
                if has_ms and hoist_ms else None)

    # prescale: |Z| <= b · nh · max|x| (signs are ±1), so the fp16-range power of two is known
    # from the raw bf16 row and applied to x exactly (a bf16 power of two), not to Z; a multiplier
    # that is not ±1 (bf16 smoothing folded into the signs) is applied first and bounds the product
    pre = prescale and split == "f16x2" and not split_in and rb == 1

    def load_pn(ref, gi, g, h):
        gs = groups[g][1]
        return load(ref.at[gi, pl.ds(start(g), gs), pl.ds(h * w, w)], mask(g, (gs, w), 0))

    def pn_tiles(gi):  # (a, c)[h][g] of row group gi
        return [[(load_pn(a_ref, gi, g, h), load_pn(c_ref, gi, g, h)) for g in range(len(groups))]
                for h in range(nh)]

    # one adaLN group per program (its rows all in one group): a and c loaded once
    pn_hoist = pn and hoist_pn and not programs and pn_rows % bm == 0
    pn_row0 = pl.program_id(0) * bm if pn and not programs else 0  # (program_id: not inside a loop body)
    pn_prog = (pn_tiles(jnp.minimum(jnp.asarray(pn_row0 // pn_rows, jnp.int32), a_ref.shape[0] - 1))
               if pn_hoist else None)

    def prenorm_row(xs, r0):
        """LayerNorm + a·u + c, rounded to bf16: the tiles of a bf16 producer's output. Statistics in float32
        from the registers: one pass (Σx and Σx² of same-shape tiles summed elementwise, then one reduction
        per tile shape; zero-padded base rows load as zeros and add nothing), or with ``pn_two_pass`` the
        reference's order (mean, then Σ(x - mean)² with the padded rows masked out)."""
        if pn_hoist:
            ac = pn_prog
        else:
            row = pn_row0 + r0  # padded rows: the last group
            ac = pn_tiles(jnp.minimum(jnp.asarray(row // pn_rows, jnp.int32), a_ref.shape[0] - 1))
        xf = [[v.astype(jnp.float32) for v in row] for row in xs]
        inv_k = jnp.float32(1.0 / k_true)
        flat = [v for row in xf for v in row]
        mean = _row_sum(flat) * inv_k
        if pn_two_pass:  # the zero-padded base rows masked out of Σ(x - mean)²
            masks = [mask(g, (groups[g][1], w), 0) for g in range(len(groups))]
            ds = [[xf[h][g] - mean if masks[g] is None else jnp.where(masks[g], xf[h][g] - mean, 0.0)
                   for g in range(len(groups))] for h in range(nh)]
            var = _row_sum([d * d for row in ds for d in row]) * inv_k
            rstd = lax.rsqrt(var + jnp.float32(pn_eps))
            return [[((ds[h][g] * rstd) * ac[h][g][0] + ac[h][g][1]).astype(jnp.bfloat16)
                     for g in range(len(groups))] for h in range(nh)]
        var = jnp.maximum(_row_sum([v * v for v in flat]) * inv_k - mean * mean, 0.0)
        rstd = lax.rsqrt(var + jnp.float32(pn_eps))
        shift = -mean * rstd
        return [[((xf[h][g] * rstd + shift) * ac[h][g][0] + ac[h][g][1]).astype(jnp.bfloat16)
                 for g in range(len(groups))] for h in range(nh)]

    def load_row(t):  # every x tile of row tile t: xs[h][g]
        r0 = jnp.asarray(t * rb, jnp.int32)
        return [[load(window(x_ref, r0, g, h), mask(g, *win_shape(g))) for g in range(len(groups))]
                for h in range(nh)]

    def row_tile(t, carry, xs=None):  # xs: the row's x tiles, already loaded (prefetch)
        r0 = jnp.asarray(t * rb, jnp.int32)  # an array index even when static (interpret mode)

        def load_x(h, g):
            return load(window(x_ref, r0, g, h), mask(g, *win_shape(g)))

        if (pre or pn) and xs is None:  # every tile first (only then: more live registers)
            xs = [[load_x(h, g) for g in range(len(groups))] for h in range(nh)]
        if pn:  # the producer's LayerNorm + adaLN affine (signs and smoothing folded into a, c)
            xs = prenorm_row(xs, r0)
        ms_done = False
        if pre and has_ms and not ms_unit:  # bf16 x · bf16 multiplier, rounded once (bf16_input)
            xs = [[xs[h][g] * (ms_tiles[h][g] if ms_tiles is not None else load_ms(g, h))
                   for g in range(len(groups))] for h in range(nh)]
            ms_done = True
        if pre:
            amax_x = _row_absmax([v for row in xs for v in row], merge=merge_absmax)
            s_mid = pow2_scale(amax_x.astype(jnp.float32) * jnp.float32(b * nh))
            s_x = s_mid.astype(jnp.bfloat16)
        ts = []  # ts[h][i-group]: x · multiplier, float32 (G, rb·w)
        for h in range(nh):
            row = []
            for g in range(len(groups)):
                v = xs[h][g] if xs is not None else load_x(h, g)
                if split_in:
                    v = v.astype(jnp.float32)
                if has_ms and not ms_done:  # without split_in: bf16 · (bf16 multiplier): ±1 is exact
                    msv = ms_tiles[h][g] if ms_tiles is not None else load_ms(g, h)
                    msv = msv if rb == 1 else msv[None]
                    v = v * (msv * s_x if pre else msv)
                elif pre:
                    v = v * s_x
                row.append(to_tile(v))
            ts.append(row)
        if split == "f16x2" and not pre:  # row absmax of the (scaled) input: bounds |Z| / (b · nh)
            amax_in = _row_absmax([t for row in ts for t in row], merge=merge_absmax)
            amax_in = amax_in.astype(jnp.float32)
            if split_in:  # the input itself into the fp16 range, exactly (power of two)
                s_in = pow2_scale(amax_in)
                ts = [[t * s_in for t in row] for row in ts]
                amax_in = amax_in * s_in
        zs = []  # zs[h][j-group] = H_bᵀ T
        for h in range(nh):
            z = []
            for j in range(len(groups)):
                acc = None
                for g in range(len(groups)):
                    if split_in:
                        d = _dot_split(hbt[j][g], ts[h][g], split, split_lhs=False)
                    else:  # x · signs is bf16: one exact operand
                        d = _dot(hbt[j][g], ts[h][g])
                    acc = d if acc is None else acc + d
                z.append(acc)
            zs.append(z)
        # middle Sylvester factor: butterflies across the h tiles, one j-group at a time
        for j in range(len(groups)):
            col = _butterflies([zs[h][j] for h in range(nh)])
            for h in range(nh):
                zs[h][j] = col[h]
        unscale = None
        if pre:
            unscale = 1.0 / s_mid
        elif split == "f16x2":  # Z into the fp16 range by the bound |Z| <= b · nh · amax_in
            s_mid = pow2_scale(amax_in * jnp.float32(b * nh))
            zs = [[z * s_mid for z in row] for row in zs]
            unscale = 1.0 / (s_mid * s_in) if split_in else 1.0 / s_mid
        flat = [from_tile(_dot_split(zs[h][j], hw, split, split_lhs=True))
                for h in range(nh) for j in range(len(groups))]
        # per-row absmax over every tile (zero-padded rows of H_b give exact zeros)
        amax = _row_absmax(flat, merge=merge_absmax)  # rb == 1: a scalar; else (rb,)
        pack = pack_int8 and jnp.dtype(dtype) == jnp.int8 and rs_ref is None
        if rb == 1:
            scale, qs = _quantize(flat, amax, inv_sqrt_k, interpret, dtype, pack)
            if unscale is not None:
                scale = jnp.where(amax > 0, scale * unscale, scale)
            pltriton.store(s_ref.at[pl.ds(r0, 1), :], jnp.broadcast_to(scale, (1, 1)))
            if rs_ref is not None:  # padded base rows hold exact zeros: summing them is harmless
                pltriton.store(rs_ref.at[pl.ds(r0, 1), :], jnp.broadcast_to(_tile_sums(qs, 2), (1, 1)))
        else:
            scale, qs = _quantize(flat, amax[:, None, None], inv_sqrt_k, interpret, dtype, pack)
            pltriton.store(s_ref.at[pl.ds(r0, rb), :], scale.reshape(rb, 1))
            if rs_ref is not None:
                pltriton.store(rs_ref.at[pl.ds(r0, rb), :], _tile_sums(qs, 2).reshape(rb, 1))
        i = 0
        for h in range(nh):
            for j in range(len(groups)):
                # pltriton.store, not `ref[...] =`: jax 0.10's plain-store lowering cannot take
                # the dynamic row index
                pltriton.store(window(q_ref, r0, j, h), qs[i].astype(q_ref.dtype), mask=mask(j, *win_shape(j)))
                i += 1
        return carry

    n_tiles = bm // rb
    tile = lambda t: t  # noqa: E731 - loop step -> row tile of this program's block
    if programs:  # persistent grid: the refs are whole arrays, steps strided by the grid size
        n_tiles, pid = steps, pl.program_id(0)
        tile = lambda t: jnp.minimum(pid + t * programs, last_tile)  # noqa: E731
    if prefetch and n_tiles > 1 and unroll:
        nxt = load_row(tile(0))
        for t in range(n_tiles):
            cur, nxt = nxt, (load_row(tile(t + 1)) if t + 1 < n_tiles else None)
            row_tile(tile(t), 0, cur)
    elif prefetch and n_tiles > 1:
        def step(t, xs):  # the last step reloads its own row (no read past the block)
            nxt = load_row(tile(jnp.minimum(t + 1, n_tiles - 1)))
            row_tile(tile(t), 0, xs)
            return nxt

        lax.fori_loop(0, n_tiles, step, load_row(tile(0)))
    elif unroll or n_tiles == 1:
        for t in range(n_tiles):
            row_tile(tile(t), 0)
    else:
        lax.fori_loop(0, n_tiles, lambda t, c: row_tile(tile(t), c), 0)


def _out_specs(m: int, bm: int, q_shape: tuple, q_spec, row_sum: bool, dtype=jnp.int8):
    """Output shapes and block specs: int8 (or FP8) codes, float32 scales (and int32 code sums);
    ``bm == m``: one whole-array block for every program (persistent grid)."""
    shapes = [jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct((m, 1), jnp.float32)]
    at = (lambda i: (0, 0)) if bm == m else (lambda i: (i, 0))  # noqa: E731
    specs = [q_spec, pl.BlockSpec((bm, 1), at)]
    if row_sum:
        shapes.append(jax.ShapeDtypeStruct((m, 1), jnp.int32))
        specs.append(pl.BlockSpec((bm, 1), at))
    return tuple(shapes), tuple(specs)


def _mma_call(x3, ms, h_base, cfg: RotateTiling, split_in: bool, interpret: bool, row_sum: bool = False,
              dtype=jnp.int8, ms_unit: bool = True, pn: tuple | None = None, pn_rows: int = 0,
              pn_eps: float = 1e-6):
    m, b, p = x3.shape
    k = b * p
    hb, p2 = effective_base(np.asarray(h_base), p, cfg.grow)
    if hb.shape[0] != b:
        b, p = hb.shape[0], p2
        x3 = x3.reshape(m, b, p)
        ms = None if ms is None else ms.reshape(b, p)
    if pn is not None:  # (a, c) (G, K) float32 -> (G, b, p)
        pn = tuple(v.reshape(v.shape[0], b, p) for v in pn)
    w, rb, bm = mma_shape(p, cfg)
    groups = row_groups(b)
    bpad = groups[-1][0] + groups[-1][1]
    hbt = np.zeros((bpad, bpad), np.float32)
    hbt[:b, :b] = hb.T
    hw = np.kron(np.eye(rb, dtype=np.float32), sylvester(w))
    kernel = functools.partial(
        _mma_kernel, groups=groups, w=w, rb=rb, nh=p // w, has_ms=ms is not None,
        split_in=split_in, split=cfg.split, inv_sqrt_k=1.0 / math.sqrt(b * p),
        unroll=cfg.unroll, pad_block=cfg.pad_block, interpret=interpret, row_sum=row_sum, dtype=dtype,
        pack_int8=cfg.pack_int8, hoist_ms=cfg.hoist_ms, prescale=cfg.prescale,
        merge_absmax=cfg.merge_absmax, prefetch=cfg.prefetch, ms_unit=ms_unit,
        pn_rows=pn_rows if pn is not None else 0, pn_eps=pn_eps, k_true=k, hoist_pn=cfg.hoist_pn,
        pn_two_pass=cfg.pn_two_pass)
    grid, blk, at = (m // bm,), bm, lambda i: (i, 0, 0)  # noqa: E731
    if cfg.programs:  # whole arrays per program, row tiles strided by the grid size
        tiles = m // rb
        grid, blk, at = (min(cfg.programs, tiles),), m, lambda i: (0, 0, 0)  # noqa: E731
        kernel = functools.partial(kernel, programs=grid[0], steps=-(-tiles // grid[0]),
                                   last_tile=tiles - 1)
    full = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))  # noqa: E731
    # blocks span the padded base order: the rows past b are masked in every load and store
    bb = bpad if cfg.pad_block else b
    in_specs = [pl.BlockSpec((blk, bb, p), at)]
    args = [x3]
    if pn is not None:
        in_specs += [full((pn[0].shape[0], bb, p))] * 2
        args += list(pn)
    elif ms is not None:
        in_specs.append(full((bb, p)))
        # ±1, or a bf16-rounded multiplier (bf16_input): exact in bf16
        args.append(ms if split_in else ms.astype(jnp.bfloat16))
    in_specs += [full((bpad, bpad)), full(hw.shape)]
    args += [jnp.asarray(hbt, jnp.bfloat16), jnp.asarray(hw, jnp.bfloat16)]
    out_shape, out_specs = _out_specs(m, blk, (m, b, p), pl.BlockSpec((blk, bb, p), at),
                                      row_sum, dtype)
    q, *rest = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return (q.reshape(m, b * p), *rest)


# --------------------------------------------------------------------------------------------
# "fma": H_p as a dot per (bm, p) chunk, H_b as signed sums of chunks on the CUDA cores
# --------------------------------------------------------------------------------------------


def _signed_sum(terms):
    """Σ sign·t for static signs, with as few negations as possible."""
    pos = [t for s, t in terms if s > 0]
    neg = [t for s, t in terms if s < 0]
    acc = None
    for t in pos:
        acc = t if acc is None else acc + t
    for t in neg:
        acc = -t if acc is None else acc - t
    return acc


def base_plan(hb: np.ndarray, group: int):
    """Evaluation plan of ``y_j = Σ_i hb[i, j] z_i`` for a ±1 matrix: columns in groups of
    ``group``; rows are classed by their sign pattern relative to the group's first column, one
    partial sum per class, and every column of the group combines the class sums with signs.
    Returns ``[(cols, classes, combos)]`` with ``classes = [[(sign, i), ...], ...]`` and
    ``combos[c][k]`` the sign of class ``k`` in column ``cols[c]``."""
    b = hb.shape[0]
    plan = []
    for c0 in range(0, b, group):
        cols = list(range(c0, min(b, c0 + group)))
        keys: dict[tuple, list] = {}
        for i in range(b):
            if hb[i, cols[0]] == 0:
                continue
            ref = hb[i, cols[0]]
            key = tuple(int(hb[i, c] * ref) for c in cols)
            keys.setdefault(key, []).append((int(ref), i))
        classes = list(keys.values())
        combos = [[key[c] for key in keys] for c in range(len(cols))]
        plan.append((cols, classes, combos))
    return plan


def _fma_kernel(*refs, plan, b, p, has_ms, split_in, split, inv_sqrt_k, interpret, row_sum=False,
                dtype=jnp.int8):
    rs_ref = None
    if row_sum:
        *refs, rs_ref = refs
    if has_ms:
        x_ref, ms_ref, hp_ref, q_ref, s_ref = refs
    else:
        x_ref, hp_ref, q_ref, s_ref = refs
    hp = hp_ref[...]
    cs = []
    for i in range(b):
        c = x_ref[:, pl.ds(i * p, p)].astype(jnp.float32)
        if has_ms:
            c = c * ms_ref[:, pl.ds(i * p, p)]
        cs.append(c)
    unscale = None
    if split_in and split == "f16x2":  # per-row power of two into the fp16 range
        s_in = pow2_scale(functools.reduce(
            jnp.maximum, [jnp.max(jnp.abs(c), axis=1, keepdims=True) for c in cs]))
        cs = [c * s_in for c in cs]
        unscale = 1.0 / s_in
    if split_in:
        hp = hp.astype(jnp.float16 if split == "f16x2" else jnp.bfloat16)
        zs = [_dot_split(c, hp, split, split_lhs=True) for c in cs]
    else:  # x · signs is bf16: one exact operand
        zs = [_dot(c.astype(jnp.bfloat16), hp) for c in cs]
    ys = [None] * b
    for cols, classes, combos in plan:
        sums = [_signed_sum([(sg, zs[i]) for sg, i in cl]) for cl in classes]
        for c, col in enumerate(cols):
            ys[col] = _signed_sum(list(zip(combos[c], sums)))
    amax = None
    for y in ys:
        a = jnp.max(jnp.abs(y), axis=1, keepdims=True)
        amax = a if amax is None else jnp.maximum(amax, a)
    scale, qs = _quantize(ys, amax, inv_sqrt_k, interpret, dtype)
    if unscale is not None:
        scale = jnp.where(amax > 0, scale * unscale, scale)
    s_ref[...] = scale
    for i, q in enumerate(qs):
        q_ref[:, pl.ds(i * p, p)] = q.astype(q_ref.dtype)
    if rs_ref is not None:
        rs_ref[...] = _tile_sums(qs, 1)[:, None]


def _fma_call(x, ms, h_base, cfg: RotateTiling, split_in: bool, interpret: bool, row_sum: bool = False,
              dtype=jnp.int8):
    m, k = x.shape
    hb = np.asarray(h_base, np.float32)
    b, p = split_order(k, hb)
    bm = cfg.bm or MIN_DOT
    kernel = functools.partial(
        _fma_kernel, plan=base_plan(hb, max(1, cfg.b_group)), b=b, p=p, has_ms=ms is not None,
        split_in=split_in, split=cfg.split, inv_sqrt_k=1.0 / math.sqrt(k), interpret=interpret,
        row_sum=row_sum, dtype=dtype)
    in_specs = [pl.BlockSpec((bm, k), lambda i: (i, 0))]
    args = [x]
    if ms is not None:
        in_specs.append(pl.BlockSpec((1, k), lambda i: (0, 0)))
        args.append(ms.reshape(1, k))
    in_specs.append(pl.BlockSpec((p, p), lambda i: (0, 0)))
    args.append(jnp.asarray(sylvester(p), jnp.bfloat16))
    out_shape, out_specs = _out_specs(m, bm, (m, k), pl.BlockSpec((bm, k), lambda i: (i, 0)), row_sum, dtype)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(m // bm,),
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)


# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("h_base", "cfg", "interpret", "row_sum", "dtype", "bf16_input",
                                             "pn_eps"))
def _triton_rotate_quantize(x, signs, smooth_mult, pn_a=None, pn_c=None, *, h_base, cfg, interpret, row_sum=False,
                            dtype=jnp.int8, bf16_input=False, pn_eps=1e-6):
    m, k = x.shape
    hb = np.asarray(h_base, np.float32)
    b, p = split_order(k, hb)
    ms = None  # per-channel multiplier smooth_mult · signs, applied in the kernel
    pn = None
    if pn_a is not None:  # the signs fold into the prenorm affine: sign · bf16(u) = bf16(sign · u)
        pn = (pn_a.astype(jnp.float32), pn_c.astype(jnp.float32))
        if signs is not None:
            pn = tuple(v * signs.astype(jnp.float32)[None] for v in pn)
    else:
        if smooth_mult is not None:
            ms = smooth_mult.astype(jnp.bfloat16 if bf16_input else jnp.float32).astype(jnp.float32)
        if signs is not None:
            ms = signs.astype(jnp.float32) if ms is None else ms * signs.astype(jnp.float32)
    # bf16 x times ±1 is exactly bf16: the first dot then needs one exact operand, not a split; so
    # is bf16 x times a bf16 multiplier rounded to bf16 (bf16_input)
    split_in = (smooth_mult is not None and not bf16_input) or x.dtype != jnp.bfloat16
    ms_unit = smooth_mult is None
    bm = block_rows(k, hb, cfg)
    mp = -(-m // bm) * bm
    xp = x if mp == m else jnp.pad(x, ((0, mp - m), (0, 0)))
    if cfg.variant == "fma":
        outs = _fma_call(xp, ms, hb, cfg, split_in, interpret, row_sum, dtype)
    else:
        outs = _mma_call(xp.reshape(mp, b, p), None if ms is None else ms.reshape(b, p), hb, cfg,
                         split_in, interpret, row_sum, dtype, ms_unit=ms_unit, pn=pn,
                         pn_rows=0 if pn is None else m // pn[0].shape[0], pn_eps=pn_eps)
    return tuple(o[:m] for o in outs) if mp != m else tuple(outs)


def triton_rotate_quantize(
    x: jax.Array,
    h_base,
    signs: jax.Array | None = None,
    smooth_mult: jax.Array | None = None,
    *,
    cfg: RotateTiling = RotateTiling(),
    interpret: bool = False,
    row_sum: bool = False,
    dtype=jnp.int8,
    prenorm: tuple | None = None,
    bf16_input: bool = False,
) -> tuple[jax.Array, ...]:
    """``x (M, K)`` bf16/f32 -> ``(codes (M, K), f32 scale (M, 1))`` (int8, or FP8 e4m3 with
    ``dtype``), plus the int32 code sums ``(M, 1)`` with ``row_sum``; ``h_base`` must be concrete (a
    compile-time constant of the kernel); ``prenorm``/``bf16_input``: ``reference.input_ref``.
    Raises ``ValueError`` for unsupported shapes (:func:`supported_input` too)."""
    check_row_sum(row_sum, dtype)
    hb = np.asarray(h_base, np.float32)
    reason = supported(x.shape[-1], hb, cfg) or supported_input(x, smooth_mult, prenorm, bf16_input, hb, cfg)
    if reason:
        raise ValueError(reason)
    a, c, eps = prenorm if prenorm is not None else (None, None, 1e-6)
    return _triton_rotate_quantize(x, signs, smooth_mult, a, c, h_base=_HashableArray(hb), cfg=cfg,
                                   interpret=interpret, row_sum=row_sum, dtype=jnp.dtype(dtype),
                                   bf16_input=bool(bf16_input), pn_eps=float(eps))


def supported_input(x, smooth_mult, prenorm, bf16_input: bool, h_base, cfg: RotateTiling) -> str | None:
    """``None`` if the kernel can take this input transform (``reference.input_ref``), else the reason:
    ``bf16_input`` needs bf16 ``x``; ``prenorm`` needs ``bf16_input``, no ``smooth_mult`` (folded into
    its ``a``/``c``), the mma variant with one row per tile and its ``G`` groups dividing ``M``."""
    if not (bf16_input or prenorm is not None):
        return None
    if x.dtype != jnp.bfloat16:
        return f"bf16_input/prenorm need bf16 x, got {x.dtype}"
    if prenorm is None:
        return None
    m, k = x.shape
    check_prenorm(prenorm, m, k)
    if not bf16_input:
        return "prenorm needs bf16_input=True (the kernel rounds the producer's output to bf16)"
    if smooth_mult is not None:
        return "prenorm: fold smooth_mult into its a and c"
    if cfg.variant != "mma":
        return f"prenorm needs the mma variant, not {cfg.variant!r}"
    _, p = effective_base(np.asarray(h_base), split_order(k, h_base)[1], cfg.grow)
    _, rb, bm = mma_shape(p, cfg)
    if rb != 1:
        return f"prenorm needs one row per tile (rows_per_tile={rb} at K={k})"
    return None  # (groups that straddle programs: a and c loaded per row, slower, still correct)


class _HashableArray:
    """A read-only numpy matrix usable as a ``jax.jit`` static argument."""

    def __init__(self, a: np.ndarray):
        self.a = np.array(a, np.float32)
        self.a.setflags(write=False)
        self._key = (self.a.shape, self.a.tobytes())

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)

    @property
    def shape(self):
        return self.a.shape

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _HashableArray) and self._key == other._key


__all__ = ["RotateTiling", "VARIANTS", "base_plan", "row_groups", "supported", "supported_input",
           "triton_rotate_quantize"]

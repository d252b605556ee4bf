"""Pallas-Triton quantized flash attention (semantics: ``reference.py``; operand layouts: ``layout.py``).

One program owns ``block_m`` query rows of one ``(b, h)``: it quantizes its Q rows to int8 in the
prologue (``fuse_q``; after subtracting the tile's mean query when ``smooth_q``; per token, or one scale
for the tile when ``q_block == block_m``) or loads them from the preceding pass, then walks the keys in
blocks of ``block_n``: ``int8 Q · int8 Kᵀ`` with int32 accumulation on the tensor cores (one dot per
lane window of the head), the float32 logits scaled by ``s_q · s_k · log2(e)/√D`` plus the per-key
correction ``q̄ · k_j`` of Q smoothing, the online softmax in base 2, and ``P · V`` with ``P · 448``
and ``V`` in FP8 e4m3 (or both bf16), float32 accumulators. The epilogue divides by the row sums, applies the FP8
``V`` scales and stores each output lane window straight into the ``(B, Nq, H·D)`` output (the
leading lanes of an overlapping window masked).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params
from pallas_kernels.ops.quant_attention.layout import (
    HEAD_SPLITS,
    PV_MIN_WIDTH,
    QK_MIN_WIDTH,
    V_LAYOUTS,
    in_bounds,
    lane_windows,
    prepare,
)
from pallas_kernels.ops.quant_attention.reference import FP8, FP8_MAX, QMAX, check_settings
from pallas_kernels.ops.quantize.triton import round_half_even

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class QuantAttentionConfig:
    """Tiling and layout choices of the kernel (``configs.json`` stores them per GPU and shape).

    ``block_m`` query rows per program, ``block_n`` keys per step (also the ``kv_block`` of the
    numerics: ``P`` is quantized relative to the running max over these blocks); ``head_split``
    ``"window"`` / ``"pad"`` (``layout.py``); ``fuse_q``: Q quantized in the kernel's prologue
    (needs ``"window"``) instead of by the preceding pass; ``v_layout`` of the FP8 ``V``: ``"dn"``
    (transposed, K-major for the FP8 MMA) or ``"nd"``."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    head_split: str = "window"
    fuse_q: bool = True
    v_layout: str = "dn"

    def check(self, d: int, q_block: int) -> None:
        for name in ("block_m", "block_n"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"{name}={val} must be a power of two >= 16")
        if self.head_split not in HEAD_SPLITS:
            raise ValueError(f"head_split={self.head_split!r} unknown; choose one of {HEAD_SPLITS}")
        if self.v_layout not in V_LAYOUTS:
            raise ValueError(f"v_layout={self.v_layout!r} unknown; choose one of {V_LAYOUTS}")
        if self.fuse_q and not in_bounds(lane_windows(d, QK_MIN_WIDTH, self.head_split), d):
            raise ValueError(f"fuse_q needs lane windows inside the head (head_split='window', D={d} >= "
                             f"{QK_MIN_WIDTH})")
        if self.fuse_q and q_block not in (1, self.block_m):
            raise ValueError(f"fuse_q quantizes Q per token or per block_m={self.block_m} rows, got q_block={q_block}")


def _kernel(*refs, d: int, bm: int, bn: int, nk_blocks: int, pv: str, fuse_q: bool, q_tile_scale: bool, v_layout: str,
            masked: bool, head_split: str, smooth_q: bool, nq: int, interpret: bool):
    it = iter(refs)
    q_ref = next(it) if fuse_q else None
    qm_ref = next(it) if fuse_q and smooth_q else None
    qq_ref, sq_ref = (None, None) if fuse_q else (next(it), next(it))
    kq_ref, sk_ref = next(it), next(it)
    bias_ref = next(it) if smooth_q else None
    valid_ref = next(it) if masked else None
    if pv == "fp8":
        v_ref, sv_ref = next(it), next(it)
    else:
        v_ref, sv_ref = next(it), None
    o_ref = next(it)

    i, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    qk_win = lane_windows(d, QK_MIN_WIDTH, head_split)
    pv_win = lane_windows(d, PV_MIN_WIDTH)
    qk_off = [sum(w for _, w, _ in qk_win[:n]) for n in range(len(qk_win))]
    pv_off = [sum(w for _, w, _ in pv_win[:n]) for n in range(len(pv_win))]

    # ---- prologue: this program's int8 Q rows and their scales (times log2(e)/sqrt(D))
    if fuse_q:
        rows = pl.ds(i * bm, bm)
        tiles = [q_ref[b, rows, pl.ds(h * d + off, w)].astype(jnp.float32) for off, w, _ in qk_win]
        if smooth_q:  # q - q̄ on the real rows; padded rows stay zero (they must not widen a tile scale)
            real = (i * bm + lax.broadcasted_iota(jnp.int32, (bm, 1), 0)) < nq
            tiles = [jnp.where(real, t - qm_ref[b, h, i, pl.ds(lo, w)][None, :], 0.0)
                     for t, lo, (_, w, _) in zip(tiles, qk_off, qk_win)]
        amax = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(t), axis=1) for t in tiles])  # (bm,)
        if q_tile_scale:
            amax = jnp.full_like(amax, jnp.max(amax))
        sq = amax / QMAX
        sq = jnp.where(sq > 0, sq, jnp.float32(1.0))
        qi = [jnp.clip(round_half_even(t / sq[:, None], interpret=interpret), -QMAX, QMAX).astype(jnp.int8)
              for t in tiles]
    else:
        rows = pl.ds(i * bm, bm)
        qi = [qq_ref[b, h, rows, pl.ds(lo, w)] for lo, (_, w, _) in zip(qk_off, qk_win)]
        sq = sq_ref[b, h, rows]
    qscale = sq * jnp.float32(LOG2E / math.sqrt(d))

    def body(j, carry):
        accs, m_prev, l_prev = carry
        keys = pl.ds(pl.multiple_of(j * bn, bn), bn)
        acc = None
        for qt, lo, (_, w, _) in zip(qi, qk_off, qk_win):
            part = lax.dot_general(qt, kq_ref[b, h, keys, pl.ds(lo, w)], (((1,), (1,)), ((), ())),
                                   preferred_element_type=jnp.int32)
            acc = part if acc is None else acc + part
        s = acc.astype(jnp.float32) * qscale[:, None] * sk_ref[b, h, keys][None, :]
        if smooth_q:
            s = s + bias_ref[b, h, i, keys][None, :]
        if masked:
            s = jnp.where(valid_ref[b, keys][None, :] != 0, s, -jnp.inf)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1))
        m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
        alpha = jnp.exp2(m_prev - m_use)
        p = jnp.exp2(s - m_use[:, None])
        l_new = l_prev * alpha + jnp.sum(p, axis=1)
        if pv == "fp8":
            pt = (p * FP8_MAX).astype(FP8)
        else:
            pt = p.astype(jnp.bfloat16)
        new = []
        for a, lo, (off, w, _) in zip(accs, pv_off, pv_win):
            if pv == "fp8" and v_layout == "dn":
                part = lax.dot_general(pt, v_ref[b, h, pl.ds(lo, w), keys], (((1,), (1,)), ((), ())),
                                       preferred_element_type=jnp.float32)
            elif pv == "fp8":
                part = jnp.dot(pt, v_ref[b, h, keys, pl.ds(lo, w)], preferred_element_type=jnp.float32)
            else:
                vt = v_ref[b, keys, pl.ds(h * d + off, w)]
                part = jnp.dot(pt, vt.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
            new.append(a * alpha[:, None] + part)
        return new, m_new, l_new

    accs = [jnp.zeros((bm, w), jnp.float32) for _, w, _ in pv_win]
    m0 = jnp.full((bm,), -jnp.inf, jnp.float32)
    l0 = jnp.zeros((bm,), jnp.float32)
    accs, _, l_fin = lax.fori_loop(0, nk_blocks, body, (accs, m0, l0))

    # ---- epilogue: 1/l, the FP8 scales of V (and of P), store the lane windows in place
    inv = jnp.where(l_fin > 0, 1.0 / jnp.where(l_fin > 0, l_fin, 1.0), 0.0)
    for a, lo, (off, w, first) in zip(accs, pv_off, pv_win):
        out = a * inv[:, None]
        if pv == "fp8":
            out = out * (sv_ref[b, h, pl.ds(lo, w)] * jnp.float32(1.0 / FP8_MAX))[None, :]
        out = out.astype(o_ref.dtype)
        dst = o_ref.at[b, rows, pl.ds(h * d + off, w)]
        if first == 0:
            dst[...] = out
        else:
            lanes = lax.broadcasted_iota(jnp.int32, (bm, w), 1) >= first
            pltriton.store(dst, out, mask=lanes)


@functools.partial(jax.jit, static_argnames=("pv", "q_block", "k_block", "smooth_k", "smooth_q", "cfg", "interpret"))
def triton_quant_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                           pv: str = "fp8", q_block: int = 1, k_block: int = 1, smooth_k: bool = True,
                           smooth_q: bool = True, cfg: QuantAttentionConfig = QuantAttentionConfig(),
                           interpret: bool = False) -> jax.Array:
    """``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``, ``key_mask (B, Nk)`` → ``(B, Nq, H, D)`` in ``q.dtype``."""
    b, nq, h, d = q.shape
    nk = k.shape[1]
    check_settings(pv, q_block, k_block, cfg.block_n)
    cfg.check(d, q_block)
    ops = prepare(q, k, v, key_mask, pv=pv, q_block=q_block, k_block=k_block, smooth_k=smooth_k, smooth_q=smooth_q,
                  block_m=cfg.block_m, block_n=cfg.block_n, head_split=cfg.head_split, fuse_q=cfg.fuse_q,
                  v_layout=cfg.v_layout)
    nq_p = -(-nq // cfg.block_m) * cfg.block_m
    nk_p = ops["kq"].shape[2]
    masked = ops["valid"] is not None
    args = ([ops["q"]] + ([ops["qm"]] if smooth_q else [])) if cfg.fuse_q else [ops["qq"], ops["sq"]]
    args += [ops["kq"], ops["sk"]] + ([ops["bias"]] if smooth_q else [])
    if masked:
        args.append(ops["valid"])
    args += [ops["vq"], ops["sv"]] if pv == "fp8" else [ops["v"]]
    kernel = functools.partial(
        _kernel, d=d, bm=cfg.block_m, bn=cfg.block_n, nk_blocks=nk_p // cfg.block_n, pv=pv, fuse_q=cfg.fuse_q,
        q_tile_scale=cfg.fuse_q and q_block == cfg.block_m and q_block > 1, v_layout=cfg.v_layout, masked=masked,
        head_split=cfg.head_split, smooth_q=smooth_q, nq=nq, interpret=interpret)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b, nq_p, h * d), q.dtype),
        grid=(nq_p // cfg.block_m, b, h),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
        name="quant_attention",
    )(*args)
    return out[:, :nq].reshape(b, nq, h, d)

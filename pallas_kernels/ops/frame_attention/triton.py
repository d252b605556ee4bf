"""Pallas-Triton attention across frames (see ``reference.py``), for the few-frame case.

One program handles ``bs`` consecutive positions of one head: for each position it loads the
``(T, D)`` slices of q, k, v straight from the frame-major ``(B, T, S, C)`` arrays (rows ``S·C``
apart), forms the ``(T, T)`` logits with a tensor-core dot, takes the float32 softmax and writes
``p · v`` back in place. Nothing is transposed, and the ``T × T`` problem is never padded to a
flash-attention tile (cuDNN's tiles are 64 × 128).

Triton tiles must be powers of two of at least 16: ``T`` is padded up (by the wrapper, masked
out of the softmax) and a head width ``D`` that is not a power of two is covered by a main chunk
(the largest power of two ≤ D) and an overlapping window that ends at ``D`` whose leading lanes are
zeroed on load and skipped on store (D = 72: lanes 0..63, then 56..71 of which 64..71 count). Every
access stays inside the array, also in interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, pltriton, triton_compiler_params


@dataclasses.dataclass(frozen=True)
class FrameAttentionConfig:
    # bs: positions per program (the largest of bs, 8, 4, 2, 1 dividing S is used). Swept on the
    # H200 at STDiT-XL 16x512 (benchmarks/results/bench_parts.md): 0.15-0.19 ms for every bs in
    # 2..16 and 1..4 warps, one warp per program slightly ahead.
    positions: int = 16
    num_warps: int = 1
    num_stages: int = 1


def _pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def head_chunks(d: int) -> list[tuple[int, int, int]]:
    """``(offset, width, first_valid_lane)`` windows covering a head of width ``d`` exactly once."""
    if d < 16:
        raise ValueError(f"head width {d} < 16 is not supported by the Triton kernel")
    d0 = 1 << (d.bit_length() - 1)
    chunks = [(0, d0, 0)]
    rest = d - d0
    if rest:
        w = _pow2_at_least(rest)
        chunks.append((d - w, w, w - rest))
    return chunks


def _kernel(q_ref, k_ref, v_ref, o_ref, *, t: int, d: int, bs: int):
    tp = q_ref.shape[1]
    b, h = pl.program_id(0), pl.program_id(2)
    s_first = pl.program_id(1) * bs
    chunks = head_chunks(d)
    cols = lax.broadcasted_iota(jnp.int32, (tp, tp), 1)
    scale = 1.0 / math.sqrt(d)

    def lane_mask(width, first):
        return lax.broadcasted_iota(jnp.int32, (tp, width), 1) >= first

    def window(ref, s, off, width):
        return ref.at[b, pl.ds(0, tp), s, pl.ds(h * d + off, width)]

    def load(ref, s, off, width, first):
        if first == 0:
            return window(ref, s, off, width)[...]
        return pltriton.load(window(ref, s, off, width), mask=lane_mask(width, first), other=0)

    def position(i, carry):
        s = s_first + i
        logits = None
        for off, width, first in chunks:
            part = lax.dot_general(load(q_ref, s, off, width, first), load(k_ref, s, off, width, first),
                                   (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            logits = part if logits is None else logits + part
        logits = logits * scale
        if t < tp:
            logits = jnp.where(cols < t, logits, -jnp.inf)
        logits = logits - jnp.max(logits, axis=1, keepdims=True)
        e = jnp.exp(logits)
        p = (e / jnp.sum(e, axis=1, keepdims=True)).astype(q_ref.dtype)
        for off, width, first in chunks:
            out = jnp.dot(p, load(v_ref, s, off, width, first), preferred_element_type=jnp.float32)
            out = out.astype(o_ref.dtype)
            if first == 0:
                window(o_ref, s, off, width)[...] = out
            else:
                pltriton.store(window(o_ref, s, off, width), out, mask=lane_mask(width, first))
        return carry

    lax.fori_loop(0, bs, position, 0)


@functools.partial(jax.jit, static_argnames=("cfg", "interpret"))
def triton_frame_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, cfg: FrameAttentionConfig = FrameAttentionConfig(),
    interpret: bool = False,
) -> jax.Array:
    """``q, k, v (B, T, S, H, D)`` (half precision) → ``(B, T, S, H, D)``."""
    b, t, s, h, d = q.shape
    head_chunks(d)  # validates d
    tp = _pow2_at_least(t)
    bs = next(n for n in (cfg.positions, 16, 8, 4, 2, 1) if n <= cfg.positions and s % n == 0)
    flat = [a.reshape(b, t, s, h * d) for a in (q, k, v)]
    if tp != t:
        flat = [jnp.pad(a, ((0, 0), (0, tp - t), (0, 0), (0, 0))) for a in flat]
    out = pl.pallas_call(
        functools.partial(_kernel, t=t, d=d, bs=bs),
        out_shape=jax.ShapeDtypeStruct((b, tp, s, h * d), q.dtype),
        grid=(b, s // bs, h),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*flat)
    return out[:, :t].reshape(b, t, s, h, d)

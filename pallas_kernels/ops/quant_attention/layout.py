"""Operand layouts of the quantized-attention kernel and the one XLA pass that writes them.

Pallas-Triton tiles are powers of two, head widths are not (PixArt / Open-Sora XL: D = 72). A head
is covered by *lane windows* ``(offset, width, first)``: the window reads lanes
``offset .. offset+width-1`` of the head and only lanes ``>= offset + first`` count
(:func:`lane_windows`). Two plans:

* ``"window"``: the largest power of two ``<= D`` plus one window that ends at ``D`` (D = 72:
  lanes 0..63, then 40..71 of which 64..71 count for the int8 contraction, whose tiles need 32
  lanes; 0..63 and 56..71 for the output). Every access stays inside the head, so Q and V can be
  read straight from the model's ``(B, N, H·D)`` arrays; 96 / 72 = 1.33x the int8 MACs.
* ``"pad"``: one window of the next power of two (D = 72 → 128, 1.78x), only for operands the
  preceding pass writes (Q and K int8; zero lanes beyond D).

The preceding pass (:func:`prepare`) runs the reference's own quantization
(:func:`~pallas_kernels.ops.quant_attention.reference.quantized_operands`) and lays the results out
per ``(b, h)`` with the windows concatenated (duplicated lanes zeroed, so a window contributes each
lane once): ``kq (B, H, Nk', Dk)`` int8 and ``sk (B, H, Nk')``; Q likewise unless the kernel
quantizes it itself (``fuse_q``); for FP8 ``P·V``, ``vq`` e4m3 as ``(B, H, Dv, Nk')`` ("dn",
transposed: the K-major operand FP8 wgmma wants) or ``(B, H, Nk', Dv)`` ("nd") and ``sv (B, H, Dv)``;
``valid (B, Nk')`` int32 when some key is masked or padded; with Q smoothing (one mean per ``block_m``
queries: one per program) the logit correction ``bias (B, H, Nq'/block_m, Nk')`` (``q̄ · k_j`` already
times ``log2(e)/√D``, the kernel's base-2 logit scale) and, for ``fuse_q``, the mean queries
``qm (B, H, Nq'/block_m, Dk)`` as plain lane windows (the kernel subtracts them from the Q tiles it
reads). ``Nk'`` / ``Nq'`` are the lengths rounded up to the kernel's blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.ops.quant_attention.reference import quantized_operands

HEAD_SPLITS: tuple[str, ...] = ("window", "pad")
V_LAYOUTS: tuple[str, ...] = ("dn", "nd")
QK_MIN_WIDTH = 32  # int8 MMA tiles contract >= 32 lanes
PV_MIN_WIDTH = 16


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def lane_windows(d: int, min_width: int, split: str = "window") -> list[tuple[int, int, int]]:
    """``(offset, width, first)`` windows covering lanes ``0..d-1`` of a head exactly once
    (lanes ``offset+first .. offset+width-1``), each ``width`` a power of two ``>= min_width``.
    ``"pad"``: one window of the next power of two, reaching beyond ``d`` (operands the preceding
    pass zero-pads only)."""
    if split not in HEAD_SPLITS:
        raise ValueError(f"head_split={split!r} unknown; choose one of {HEAD_SPLITS}")
    if split == "pad" or d <= min_width:
        return [(0, _pow2_at_least(d, min_width), 0)]
    main = 1 << (d.bit_length() - 1)
    out = [(0, main, 0)]
    rest = d - main
    if rest:
        w = _pow2_at_least(rest, min_width)
        out.append((d - w, w, w - rest))
    return out


def layout_width(windows: list[tuple[int, int, int]]) -> int:
    return sum(w for _, w, _ in windows)


def in_bounds(windows: list[tuple[int, int, int]], d: int) -> bool:
    """Whether every window lies inside the head (so the model's arrays can be read directly)."""
    return all(off >= 0 and off + w <= d for off, w, _ in windows)


def gather_lanes(x: jax.Array, windows: list[tuple[int, int, int]]) -> jax.Array:
    """``x (..., D)`` → ``(..., Dk)``: the windows side by side, uncounted lanes zero."""
    d = x.shape[-1]
    parts = []
    for off, w, first in windows:
        stop = min(off + w, d)
        part = x[..., off:stop]
        if stop - off < w:  # "pad": zeros beyond the head
            part = jnp.pad(part, [(0, 0)] * (x.ndim - 1) + [(0, w - (stop - off))])
        if first:
            lane = jnp.arange(w) >= first
            part = jnp.where(lane, part, jnp.zeros((), part.dtype))
        parts.append(part)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def window_slices(x: jax.Array, windows: list[tuple[int, int, int]]) -> jax.Array:
    """``x (..., D)`` → ``(..., Σ width)``: the windows' lanes as they are (no zeroing; windows in bounds)."""
    parts = [x[..., off:off + w] for off, w, _ in windows]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _heads_first(x: jax.Array, n_pad: int, fill=0) -> jax.Array:
    """``(B, N, H, ...)`` → ``(B, H, N', ...)`` with ``N' - N`` rows of ``fill``."""
    x = jnp.moveaxis(x, 2, 1)
    n = x.shape[2]
    if n_pad != n:
        pad = [(0, 0)] * x.ndim
        pad[2] = (0, n_pad - n)
        x = jnp.pad(x, pad, constant_values=fill)
    return x


def prepare(q, k, v, key_mask, *, pv: str, q_block: int, k_block: int, smooth_k: bool, smooth_q: bool, block_m: int,
            block_n: int, head_split: str, fuse_q: bool, v_layout: str) -> dict[str, jax.Array | None]:
    """The kernel's operands (module docstring) from ``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``."""
    if v_layout not in V_LAYOUTS:
        raise ValueError(f"v_layout={v_layout!r} unknown; choose one of {V_LAYOUTS}")
    b, nq, h, d = q.shape
    nk = k.shape[1]
    nq_p, nk_p = round_up(nq, block_m), round_up(nk, block_n)
    ops = quantized_operands(q, k, v, key_mask, pv=pv, q_block=q_block, k_block=k_block, smooth_k=smooth_k,
                             smooth_q=smooth_q, q_mean_block=block_m)
    qk_win = lane_windows(d, QK_MIN_WIDTH, head_split)
    pv_win = lane_windows(d, PV_MIN_WIDTH)
    out: dict[str, jax.Array | None] = {
        "kq": _heads_first(gather_lanes(ops["kq"], qk_win), nk_p),
        "sk": _heads_first(ops["sk"], nk_p, fill=1.0),
        "valid": None,
        "q": None, "qq": None, "sq": None, "v": None, "vq": None, "sv": None, "bias": None, "qm": None,
    }
    if smooth_q:
        bias = ops["bias"] * (math.log2(math.e) / math.sqrt(d))  # (B, nb, Nk, H)
        bias = jnp.transpose(bias, (0, 3, 1, 2))  # (B, H, nb, Nk)
        out["bias"] = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, nk_p - nk))) if nk_p != nk else bias
        if fuse_q:
            out["qm"] = jnp.swapaxes(window_slices(ops["qm"], qk_win), 1, 2)  # (B, H, nb, Dk)
    if key_mask is not None or nk_p != nk:
        valid = ops["valid"].astype(jnp.int32)
        out["valid"] = jnp.pad(valid, ((0, 0), (0, nk_p - nk))) if nk_p != nk else valid
    if fuse_q:
        qf = q.reshape(b, nq, h * d)
        out["q"] = jnp.pad(qf, ((0, 0), (0, nq_p - nq), (0, 0))) if nq_p != nq else qf
    else:
        out["qq"] = _heads_first(gather_lanes(ops["qq"], qk_win), nq_p)
        out["sq"] = _heads_first(ops["sq"], nq_p, fill=1.0)
    if pv == "fp8":
        vq = _heads_first(gather_lanes(ops["vq"], pv_win), nk_p)  # (B, H, Nk', Dv)
        out["vq"] = jnp.swapaxes(vq, 2, 3) if v_layout == "dn" else vq
        out["sv"] = gather_lanes(ops["sv"], pv_win)  # (B, H, Dv)
    else:
        vf = v.astype(jnp.bfloat16).reshape(b, nk, h * d)
        out["v"] = jnp.pad(vf, ((0, 0), (0, nk_p - nk), (0, 0))) if nk_p != nk else vf
    return out


__all__ = ["HEAD_SPLITS", "V_LAYOUTS", "gather_lanes", "in_bounds", "lane_windows", "layout_width", "prepare",
           "round_up", "window_slices"]

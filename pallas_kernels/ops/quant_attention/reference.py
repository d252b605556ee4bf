"""Quantized attention (SageAttention-style), the semantics the kernels follow.

``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``, ``key_mask (B, Nk)`` (True / nonzero = a key to attend
to; ``None``: all). Per batch row ``b`` and head ``h``:

1. **K smoothing** (``smooth_k``): ``k ← k − mean_j k[j]`` over the valid keys, one vector per
   ``(b, h)``. Every logit of a query row moves by the same ``q · mean``, which the softmax ignores;
   what is left is centred and quantizes with a smaller scale. Masked keys are set to zero (their
   logits are masked anyway), so they never widen a scale.
   **Q smoothing** (``smooth_q``): ``q ← q − q̄`` with ``q̄`` the mean query of each block of
   ``q_mean_block`` consecutive queries of one ``(b, h)`` (the last block may be shorter; the kernels use
   their ``block_m``), and the exact correction ``q̄ · k_j`` (float32, from the smoothed float keys) added
   to the logits of that block's queries with key ``j`` (SageAttention2's smoothing).
2. **INT8 Q and K**: symmetric, one scale per block of ``q_block`` (``k_block``) consecutive tokens
   and all ``D`` channels of one head (``1`` = per token): ``s = max|x| / 127`` (an all-zero block
   gets ``s = 1``), ``x_q = clip(round_half_even(x / s), −127, 127)``. :func:`block_quantize`.
3. **Logits**: ``S[i, j] = ((Σ_d q_q[i, d] k_q[j, d])_int32 · s_q[i] · s_k[j] + q̄_i · k_j) / √D`` in float32
   (``q̄_i`` the mean of ``i``'s block);
   masked keys get no weight.
4. **Online softmax over key blocks of ``kv_block``** (the flash-attention order, which the
   quantization of ``P`` depends on): for key block ``n``, ``m_n = max(m_{n−1}, max_j S[i, j∈n])``,
   ``P_n = exp(S_n − m_n)`` in float32 (values in [0, 1]), ``l`` sums the float32 ``P_n``.
5. **P·V** in ``pv`` precision:

   * ``"fp8"``: ``V`` per channel of each ``(b, h)`` over the valid tokens to float8 e4m3
     (``s_v = max_j |v[j, d]| / 448``, clipped to ±448, round to nearest even) and ``P_n · 448`` to
     e4m3; the products are exact in float32, ``O = Σ_n e^{m_n − m_N} (P8_n · V8_n) · s_v / 448``;
   * ``"bf16"``: ``P_n`` and ``V`` in bfloat16, float32 accumulation.

   ``out = O / l`` (a query row without any valid key gives 0), cast to ``q.dtype``.

The kernels compute the same quantities with ``exp2`` and the scale ``log2(e)/√D`` folded into
``s_q``, and sum in another order: they match this reference to float32 rounding of the logits,
which flips an occasional FP8 rounding of ``P`` (see ``tests/kernels/test_quant_attention.py``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

QMAX = 127.0
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8 = jnp.float8_e4m3fn
PV_FORMATS: tuple[str, ...] = ("fp8", "bf16")


def check_settings(pv: str, q_block: int, k_block: int, kv_block: int, q_mean_block: int = 128) -> None:
    """ValueError naming the culprit for an unknown ``pv`` or a non-positive block."""
    if pv not in PV_FORMATS:
        raise ValueError(f"pv={pv!r} unknown; choose one of {PV_FORMATS}")
    for name, val in (("q_block", q_block), ("k_block", k_block), ("kv_block", kv_block),
                      ("q_mean_block", q_mean_block)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}={val!r} must be a positive integer")


def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> None:
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q (B, Nq, H, D), k and v (B, Nk, H, D) expected; got {q.shape}, {k.shape}, {v.shape}")
    if key_mask is not None and (key_mask.ndim != 2 or key_mask.shape[0] not in (1, k.shape[0])
                                 or key_mask.shape[1] != k.shape[1]):
        raise ValueError(f"key_mask must have shape (B, Nk) = {k.shape[:2]} (or (1, Nk)), got {tuple(key_mask.shape)}")


def key_validity(key_mask: jax.Array | None, b: int, nk: int) -> jax.Array:
    """``(B, Nk)`` bool: which keys count (a ``(1, Nk)`` mask applies to every row)."""
    if key_mask is None:
        return jnp.ones((b, nk), bool)
    return jnp.broadcast_to(key_mask.astype(bool), (b, nk))


def smooth_keys(k: jax.Array, valid: jax.Array, smooth: bool = True) -> jax.Array:
    """Float32 ``k − mean over the valid keys`` (per ``(b, h, d)``; step 1), masked keys zero."""
    kf = k.astype(jnp.float32)
    w = valid[:, :, None, None].astype(jnp.float32)
    if smooth:
        mean = jnp.sum(kf * w, axis=1, keepdims=True) / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)
        kf = kf - mean
    return kf * w


def smooth_queries(q: jax.Array, kf: jax.Array, smooth: bool = True,
                   block: int = 128) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Step 1's Q side, per block of ``block`` queries: ``(q − q̄, q̄ (B, nb, H, D), bias (B, nb, Nk, H) =
    q̄ · k_j)`` in float32 from the smoothed, masked float keys ``kf``; without ``smooth``: ``q``, zeros, zeros."""
    qf = q.astype(jnp.float32)
    b, n, h, d = q.shape
    nb = -(-n // block)
    if not smooth:
        return qf, jnp.zeros((b, nb, h, d), jnp.float32), jnp.zeros((b, nb, kf.shape[1], h), jnp.float32)
    pad = nb * block - n
    qp = jnp.pad(qf, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else qf
    count = np.minimum(block, n - block * np.arange(nb)).astype(np.float32)  # the last block may be shorter
    mean = jnp.sum(qp.reshape(b, nb, block, h, d), axis=2) / count[None, :, None, None]
    bias = jnp.einsum("bnhd,bkhd->bnkh", mean, kf, precision=lax.Precision.HIGHEST)
    return qf - jnp.repeat(mean, block, axis=1)[:, :n], mean, bias


def block_quantize(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 of ``x (B, N, H, D)`` with one scale per ``block`` tokens of one head (step 2).

    Returns ``(int8 (B, N, H, D), float32 per-token scale (B, N, H))`` (a block's scale repeated on
    its tokens; the last block may be shorter)."""
    b, n, h, d = x.shape
    xf = x.astype(jnp.float32)
    nb = -(-n // block)
    pad = nb * block - n
    xp = jnp.pad(xf, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else xf
    amax = jnp.max(jnp.abs(xp.reshape(b, nb, block, h, d)), axis=(2, 4))  # (B, nb, H)
    scale = amax / QMAX
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    per_token = jnp.repeat(scale, block, axis=1)[:, :n]  # (B, N, H)
    q = jnp.clip(jnp.round(xf / per_token[..., None]), -QMAX, QMAX).astype(jnp.int8)
    return q, per_token


def fp8_values(v: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``V`` per channel to e4m3 (step 5): ``(float8 (B, N, H, D), float32 scale (B, H, D))``;
    masked tokens are zero and do not count in the scale."""
    vf = v.astype(jnp.float32) * valid[:, :, None, None].astype(jnp.float32)
    scale = jnp.max(jnp.abs(vf), axis=1) / FP8_MAX  # (B, H, D)
    scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
    return jnp.clip(vf / scale[:, None], -FP8_MAX, FP8_MAX).astype(FP8), scale


def to_fp8_probs(p: jax.Array) -> jax.Array:
    """``P`` in [0, 1] to e4m3 as ``P · 448`` (step 5)."""
    return (p * FP8_MAX).astype(FP8)


def quantized_operands(q, k, v, key_mask=None, *, pv: str = "fp8", q_block: int = 1, k_block: int = 1,
                       smooth_k: bool = True, smooth_q: bool = True,
                       q_mean_block: int = 128) -> dict[str, jax.Array]:
    """Steps 1–2 and the V side of step 5 (the kernels' preceding pass uses exactly these):
    ``qq, sq (B, Nq, H, D)/(B, Nq, H)``, ``qm (B, nb, H, D)`` (the mean query of each block of
    ``q_mean_block``), ``kq, sk``, ``bias (B, nb, Nk, H)`` (``q̄ · k_j``), ``valid (B, Nk)`` and ``vq``
    (e4m3 or bf16) with ``sv (B, H, D)`` (ones for bf16)."""
    b, nk = k.shape[:2]
    valid = key_validity(key_mask, b, nk)
    kf = smooth_keys(k, valid, smooth_k)
    qs, qm, bias = smooth_queries(q, kf, smooth_q, q_mean_block)
    qq, sq = block_quantize(qs, q_block)
    kq, sk = block_quantize(kf, k_block)
    if pv == "fp8":
        vq, sv = fp8_values(v, valid)
    else:
        vq = v.astype(jnp.bfloat16)
        sv = jnp.ones((b, k.shape[2], k.shape[3]), jnp.float32)
    return {"qq": qq, "sq": sq, "qm": qm, "kq": kq, "sk": sk, "bias": bias, "valid": valid, "vq": vq, "sv": sv}


def _attend_rows(qq, sq, kq, sk, bias, valid, vq, *, pv: str, kv_block: int, d: int):
    """Steps 3–5 for a chunk of query rows (``bias (B, nq, Nk, H)``: each row's ``q̄ · k_j``); float32
    ``(B, H, nq, D)`` before the ``s_v`` scale."""
    b, nk, h, _ = kq.shape
    nb = -(-nk // kv_block)
    pad = nb * kv_block - nk
    acc = lax.dot_general(qq, kq, (((3,), (3,)), ((0, 2), (0, 2))), preferred_element_type=jnp.int32)  # (B,H,nq,Nk)
    s = acc.astype(jnp.float32) * (jnp.transpose(sq, (0, 2, 1))[..., None] / math.sqrt(d))
    s = s * jnp.transpose(sk, (0, 2, 1))[:, :, None, :] + jnp.transpose(bias, (0, 3, 1, 2)) / math.sqrt(d)
    ok = valid[:, None, None, :]
    if pad:
        s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, pad)))
        ok = jnp.pad(ok, ((0, 0), (0, 0), (0, 0), (0, pad)))
        vq = jnp.pad(vq, ((0, 0), (0, pad), (0, 0), (0, 0)))
    nq = s.shape[2]
    s = jnp.where(ok, s, -jnp.inf).reshape(b, h, nq, nb, kv_block)
    ok = jnp.broadcast_to(ok, (b, 1, 1, nb * kv_block)).reshape(b, 1, 1, nb, kv_block)
    m = lax.cummax(jnp.max(s, axis=-1), axis=3)  # running max after each key block (B,H,nq,nb)
    m_use = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(ok, jnp.exp(s - m_use[..., None]), 0.0)
    l_blocks = jnp.sum(p, axis=-1)
    vb = vq.reshape(b, nb, kv_block, h, d).astype(jnp.float32)
    if pv == "fp8":
        pq = to_fp8_probs(p).astype(jnp.float32)
    else:
        pq = p.astype(jnp.bfloat16).astype(jnp.float32)
    o_blocks = jnp.einsum("bhqnk,bnkhd->bhqnd", pq, vb, precision=lax.Precision.HIGHEST)
    corr = jnp.exp(m_use - m_use[..., -1:])  # e^{m_n - m_N}
    o = jnp.sum(o_blocks * corr[..., None], axis=3)
    l = jnp.sum(l_blocks * corr, axis=3)
    if pv == "fp8":
        o = o / FP8_MAX
    return jnp.where(l[..., None] > 0, o / jnp.where(l > 0, l, 1.0)[..., None], 0.0)


def quant_attention_ref(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                        pv: str = "fp8", q_block: int = 1, k_block: int = 1, kv_block: int = 64,
                        smooth_k: bool = True, smooth_q: bool = True, q_mean_block: int = 128,
                        q_chunk: int = 1024) -> jax.Array:
    """Quantized attention (module docstring) → ``(B, Nq, H, D)`` in ``q.dtype``.

    ``q_chunk`` query rows are processed at a time (memory only: rows are independent)."""
    check_shapes(q, k, v, key_mask)
    check_settings(pv, q_block, k_block, kv_block, q_mean_block)
    ops = quantized_operands(q, k, v, key_mask, pv=pv, q_block=q_block, k_block=k_block, smooth_k=smooth_k,
                             smooth_q=smooth_q, q_mean_block=q_mean_block)
    nq, d = q.shape[1], q.shape[3]
    parts = []
    for i in range(0, nq, q_chunk):
        rows = np.arange(i, min(i + q_chunk, nq)) // q_mean_block  # each row's smoothing block
        parts.append(_attend_rows(ops["qq"][:, i:i + q_chunk], ops["sq"][:, i:i + q_chunk], ops["kq"],
                                  ops["sk"], ops["bias"][:, rows], ops["valid"], ops["vq"], pv=pv,
                                  kv_block=kv_block, d=d))
    o = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=2)  # (B, H, Nq, D)
    o = o * ops["sv"][:, :, None, :]
    return jnp.transpose(o, (0, 2, 1, 3)).astype(q.dtype)


def float_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """Unquantized float32 attention with the same masking (the accuracy yardstick)."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32),
                   precision=lax.Precision.HIGHEST) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        s = jnp.where(key_mask.astype(bool)[:, None, None, :], s, -jnp.inf)
    w = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v.astype(jnp.float32), precision=lax.Precision.HIGHEST)


__all__ = [
    "FP8_MAX",
    "PV_FORMATS",
    "QMAX",
    "block_quantize",
    "check_settings",
    "float_attention",
    "fp8_values",
    "quant_attention_ref",
    "quantized_operands",
    "smooth_keys",
    "smooth_queries",
    "to_fp8_probs",
]

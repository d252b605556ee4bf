"""Quantized attention: INT8 ``Q·Kᵀ`` after Q and K smoothing, float32 online softmax, FP8 (or bf16) ``P·V``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from pallas_kernels import _config
from pallas_kernels._compat import check_backend, default_device, is_hopper, log_once, on_gpu, plgpu, pltriton
from pallas_kernels.ops.quant_attention.layout import HEAD_SPLITS, QK_MIN_WIDTH, V_LAYOUTS, in_bounds, lane_windows
from pallas_kernels.ops.quant_attention.reference import (
    FP8_MAX,
    PV_FORMATS,
    check_settings,
    check_shapes,
    float_attention,
    quant_attention_ref,
)
from pallas_kernels.ops.quant_attention.mosaic import MosaicAttentionConfig, mosaic_quant_attention
from pallas_kernels.ops.quant_attention.triton import QuantAttentionConfig, triton_quant_attention

CONFIG_FILE = Path(__file__).with_name("configs.json")
_xla_quant_attention = jax.jit(quant_attention_ref, static_argnames=("pv", "q_block", "k_block", "kv_block",
                                                                    "smooth_k", "smooth_q", "q_mean_block",
                                                                    "q_chunk"))


def attention_config(nq: int, d: int, nk: int) -> QuantAttentionConfig:
    """Stored tiling for queries of length ``nq`` (bucketed), head width ``d`` and ``nk`` keys (bucketed)."""
    raw = _config.lookup(CONFIG_FILE, "triton_quant_attention", nq, d, _config.m_bucket(nk), {})
    names = {f.name for f in dataclasses.fields(QuantAttentionConfig)}
    return QuantAttentionConfig(**{k: v for k, v in raw.items() if k in names})


def _fp8_capable() -> bool:
    cc = getattr(default_device(), "compute_capability", None)
    try:
        return cc is None or float(cc) >= 8.9
    except (TypeError, ValueError):
        return True


MOSAIC_AUTO_MIN_QUERIES = 2048


def auto_prefers_mosaic(nq: int, masked: bool, pv: str) -> bool:
    """Whether ``backend="auto"`` takes the Mosaic GPU kernel (on a Hopper GPU) over Pallas-Triton: measured
    faster on an H100 (session 7, ``benchmarks/results/attention_h100_s7.md``) for unmasked self-attention
    with bf16 P·V at 3600-16384 queries (0.70-0.92× of cuDNN against Triton's 0.60-0.70×), slower at 1024
    queries (STDiT spatial) and on the masked 120-token cross-attention."""
    return pv == "bf16" and not masked and nq >= MOSAIC_AUTO_MIN_QUERIES


def quant_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                    pv: str = "fp8", q_block: int = 1, k_block: int = 1, smooth_k: bool = True,
                    smooth_q: bool = True, backend: str = "auto",
                    config: QuantAttentionConfig | None = None,
                    mosaic_config: MosaicAttentionConfig | None = None) -> jax.Array:
    """SageAttention-style quantized attention (``reference.py``): ``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``,
    ``key_mask (B, Nk)`` (True = attend; ``None`` = all) → ``(B, Nq, H, D)`` in ``q.dtype``.

    ``pv``: ``"fp8"`` (e4m3 ``P`` and ``V``) or ``"bf16"``; ``q_block`` / ``k_block``: tokens per int8
    scale (1 = per token); ``smooth_k``: subtract the mean key first; ``smooth_q``: the mean query of each
    ``block_m`` queries too (its exact ``q̄ · k`` term added back to the logits). ``backend``: ``auto`` runs
    the Pallas-Triton kernel on a GPU and the jitted reference elsewhere; ``mosaic`` (also chosen by ``auto`` where
    :func:`auto_prefers_mosaic` says it was measured faster) the warp-specialized Mosaic GPU kernel (``mosaic.py``: Hopper, bf16 ``P·V``; else as
    ``auto``, with one log line); ``triton`` forces the Triton kernel (interpret mode off GPU);
    ``xla``/``reference``: the reference. ``config`` overrides the stored ``configs.json`` tiling; its
    ``block_n`` is also the reference's ``kv_block`` and its ``block_m`` the reference's ``q_mean_block``,
    so both paths compute alike (the Mosaic kernel's: ``mosaic_config.block_kv`` and ``2 * block_q``).
    """
    check_backend(backend)
    check_shapes(q, k, v, key_mask)
    b, nq, h, d = q.shape
    cfg = config or attention_config(nq, d, k.shape[1])
    check_settings(pv, q_block, k_block, cfg.block_n)
    if cfg.fuse_q and (q_block not in (1, cfg.block_m) or not in_bounds(lane_windows(d, QK_MIN_WIDTH, cfg.head_split), d)):
        cfg = dataclasses.replace(cfg, fuse_q=False)  # the preceding pass quantizes Q (its blocks / narrow heads)
    if (backend == "auto" and on_gpu() and plgpu is not None and is_hopper()
            and auto_prefers_mosaic(nq, key_mask is not None, pv)):
        backend = "mosaic"  # only where it runs: elsewhere auto stays Triton without the "mosaic asked" log
    if backend == "mosaic" and on_gpu():
        reason = ("Mosaic GPU not importable" if plgpu is None else "not a Hopper GPU" if not is_hopper()
                  else "FP8 P·V not implemented in the Mosaic kernel" if pv != "bf16" else None)
        if reason is None:
            return mosaic_quant_attention(q, k, v, key_mask, q_block=q_block, k_block=k_block, smooth_k=smooth_k,
                                          smooth_q=smooth_q, cfg=mosaic_config or MosaicAttentionConfig())
        log_once(f"quant_attention:mosaic:{reason}", f"quant_attention(backend='mosaic'): {reason}; using Triton")
    want_kernel = backend == "triton" or (backend in ("auto", "mosaic") and on_gpu())
    if want_kernel and pltriton is not None:
        reason = None
        if pv == "fp8" and on_gpu() and not _fp8_capable():
            reason = "FP8 P·V needs compute capability >= 8.9"
        elif d < 16:
            reason = f"head width {d} < 16"
        if reason is None:
            return triton_quant_attention(q, k, v, key_mask, pv=pv, q_block=q_block, k_block=k_block,
                                          smooth_k=smooth_k, smooth_q=smooth_q, cfg=cfg, interpret=not on_gpu())
        log_once(f"quant_attention:{reason}", f"quant_attention: {reason}; using the XLA reference")
    return _xla_quant_attention(q, k, v, key_mask, pv=pv, q_block=q_block, k_block=k_block, kv_block=cfg.block_n,
                                smooth_k=smooth_k, smooth_q=smooth_q, q_mean_block=cfg.block_m)


__all__ = [
    "FP8_MAX",
    "HEAD_SPLITS",
    "MosaicAttentionConfig",
    "PV_FORMATS",
    "QuantAttentionConfig",
    "V_LAYOUTS",
    "attention_config",
    "auto_prefers_mosaic",
    "float_attention",
    "lane_windows",
    "mosaic_quant_attention",
    "quant_attention",
    "quant_attention_ref",
    "triton_quant_attention",
]

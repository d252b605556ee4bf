"""Quantized attention: the Pallas-Triton kernel (interpret mode on CPU) vs its reference, and the reference's
own contract (K smoothing is softmax-invariant, masked keys get no weight, close to float attention)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels.ops.quant_attention import QuantAttentionConfig, float_attention, lane_windows
from pallas_kernels.testing import requires_gpu


def qkv_inputs(seed: int, b: int, nq: int, nk: int, h: int, d: int, *, masked: bool, dtype=jnp.bfloat16):
    """Fresh random q, k, v (K with a per-channel offset, what the smoothing removes) and a key mask
    with at least one valid key per row (drawn with numpy: no per-op compiles on the CPU)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, nq, h, d)) * 1.5
    k = rng.standard_normal((b, nk, h, d)) * 1.5 + 3.0 * rng.standard_normal((1, 1, h, d))
    v = rng.standard_normal((b, nk, h, d))
    mask = None
    if masked:
        m = rng.random((b, nk)) < 0.6
        m[:, 0] = True
        mask = jnp.asarray(m)
    return (*(jnp.asarray(a.astype(np.float32), dtype) for a in (q, k, v)), mask)


reference = jax.jit(pk.quant_attention_ref, static_argnames=("pv", "q_block", "k_block", "kv_block", "smooth_k",
                                                             "smooth_q", "q_mean_block"))
exact_attention = jax.jit(float_attention)


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# the kernel cases: (name, pv, q_block, k_block, cfg, (B, Nq, Nk, H, D), masked, smooth_q); tiles of 16 so
# that odd lengths pad and several key blocks run the online softmax
KERNEL_CASES = [
    ("fp8-window-fusedq-masked-d72", "fp8", 1, 16, QuantAttentionConfig(block_m=16, block_n=16), (1, 40, 37, 2, 72),
     True, True),
    ("bf16-pad-prepassq-d64", "bf16", 16, 1,
     QuantAttentionConfig(block_m=16, block_n=16, head_split="pad", fuse_q=False), (2, 32, 48, 1, 64), False, True),
    ("fp8-nd-tilescale-d48", "fp8", 16, 64, QuantAttentionConfig(block_m=16, block_n=16, v_layout="nd"),
     (1, 16, 32, 1, 48), False, True),
    # Q smoothing in the prologue with one scale per tile: the padded rows of the last tile must stay zero
    ("bf16-fusedq-tilescale-paddedrows-d72", "bf16", 16, 1, QuantAttentionConfig(block_m=16, block_n=16),
     (1, 40, 24, 1, 72), False, True),
    ("fp8-no-q-smoothing-d64", "fp8", 1, 1, QuantAttentionConfig(block_m=16, block_n=16), (1, 24, 32, 2, 64),
     True, False),
]


@pytest.mark.parametrize("name,pv,q_block,k_block,cfg,shape,masked,smooth_q", KERNEL_CASES,
                         ids=[c[0] for c in KERNEL_CASES])
def test_kernel_interpret_matches_reference(name, pv, q_block, k_block, cfg, shape, masked, smooth_q):
    b, nq, nk, h, d = shape
    q, k, v, mask = qkv_inputs(sum(shape), b, nq, nk, h, d, masked=masked)
    if smooth_q:  # query offsets that drift along the sequence: what Q smoothing (per block_m rows) removes
        rng = np.random.default_rng(nq)
        drift = rng.standard_normal((1, 1, h, d)) * 2.0 + np.linspace(0, 1, nq)[None, :, None, None] * \
            rng.standard_normal((1, 1, h, d))
        q = q + jnp.asarray(drift, q.dtype)
    out = pk.quant_attention(q, k, v, mask, pv=pv, q_block=q_block, k_block=k_block, smooth_q=smooth_q, config=cfg,
                             backend="triton")
    ref = reference(q, k, v, mask, pv=pv, q_block=q_block, k_block=k_block, kv_block=cfg.block_n, smooth_q=smooth_q,
                    q_mean_block=cfg.block_m)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 2e-3, rel_err(out, ref)  # same integers; float32 sums in another order
    exact = exact_attention(q, k, v, mask)
    assert rel_err(out, exact) <= 1.05 * rel_err(ref, exact) + 1e-3


def test_lane_windows_cover_each_lane_once():
    for d in (16, 24, 40, 48, 64, 72, 96, 128, 144):
        for min_width in (16, 32):
            covered = np.zeros(d, int)
            for off, width, first in lane_windows(d, min_width):
                assert width & (width - 1) == 0 and width >= min_width and off >= 0 and off + width <= max(d, min_width)
                covered[off + first: min(off + width, d)] += 1
            assert (covered == 1).all(), (d, min_width)
    assert lane_windows(72, 32) == [(0, 64, 0), (40, 32, 24)]  # 96 int8 lanes for PixArt's head width
    assert lane_windows(72, 16) == [(0, 64, 0), (56, 16, 8)]  # the output / V windows (as frame_attention)
    assert lane_windows(72, 32, "pad") == [(0, 128, 0)]
    with pytest.raises(ValueError, match="head_split"):
        lane_windows(72, 32, "thirds")


def test_reference_contract():
    """Adding one vector to every key changes nothing (K smoothing; only float rounding); masked keys
    carry no weight; the quantized output stays close to float attention."""
    q, k, v, mask = qkv_inputs(3, 2, 24, 40, 2, 32, masked=True, dtype=jnp.float32)
    rng = np.random.default_rng(9)
    out = reference(q, k, v, mask, pv="fp8")
    shift = jnp.asarray(5.0 * rng.standard_normal((1, 1, 2, 32)), jnp.float32)
    shifted = reference(q, k + shift, v, mask, pv="fp8")
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(out), atol=2e-2 * float(np.abs(out).max()))
    dead = ~np.asarray(mask)[:, :, None, None]
    junk_k, junk_v = (jnp.asarray(np.where(dead, 50.0 * rng.standard_normal(k.shape), a), jnp.float32) for a in (k, v))
    np.testing.assert_array_equal(np.asarray(reference(q, junk_k, junk_v, mask, pv="fp8")), np.asarray(out))
    exact = exact_attention(q, k, v, mask)
    assert cosine(out, exact) > 0.999
    assert cosine(reference(q, k, v, mask, pv="bf16"), exact) > 0.9995


def test_q_smoothing_is_exact_and_removes_a_query_offset():
    """An offset shared by every query: with Q smoothing (exact ``q̄·k`` term) the error stays that of the
    offset-free inputs; without it the offset widens every Q scale."""
    q, k, v, _ = qkv_inputs(5, 1, 48, 64, 2, 32, masked=False, dtype=jnp.float32)
    offset = jnp.asarray(6.0 * np.random.default_rng(6).standard_normal((1, 1, 2, 32)), jnp.float32)
    exact = exact_attention(q + offset, k, v, None)
    smooth = rel_err(reference(q + offset, k, v, None, pv="bf16"), exact)
    plain = rel_err(reference(q + offset, k, v, None, pv="bf16", smooth_q=False), exact)
    base = rel_err(reference(q, k, v, None, pv="bf16"), exact_attention(q, k, v, None))
    assert smooth < 0.6 * plain, (smooth, plain)
    assert smooth < 2.0 * base, (smooth, base)


def test_dispatch_checks_arguments():
    q, k, v, _ = qkv_inputs(1, 1, 8, 8, 1, 16, masked=False, dtype=jnp.float32)
    with pytest.raises(ValueError, match="pv='int4' unknown"):
        pk.quant_attention(q, k, v, pv="int4")
    with pytest.raises(ValueError, match="q_block=0"):
        pk.quant_attention(q, k, v, q_block=0)
    with pytest.raises(ValueError, match=r"\(B, Nk\)"):
        pk.quant_attention(q, k, v, jnp.ones((3, 8), bool))
    with pytest.raises(ValueError, match="backend"):
        pk.quant_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="fuse_q"):
        QuantAttentionConfig(head_split="pad").check(72, 1)


def test_auto_takes_mosaic_only_where_it_was_measured_faster():
    from pallas_kernels.ops.quant_attention import auto_prefers_mosaic

    assert auto_prefers_mosaic(4096, False, "bf16") and auto_prefers_mosaic(3600, False, "bf16")
    assert not auto_prefers_mosaic(1024, False, "bf16")  # STDiT spatial: Triton (both below cuDNN)
    assert not auto_prefers_mosaic(4096, True, "bf16")  # masked cross-attention
    assert not auto_prefers_mosaic(4096, False, "fp8")  # the Mosaic kernel has no FP8 P.V


@requires_gpu
@pytest.mark.parametrize("pv", ["fp8", "bf16"])
def test_kernel_on_gpu_matches_reference(pv):
    q, k, v, mask = qkv_inputs(7, 2, 1024, 1024, 4, 72, masked=False)
    cfg = pk.ops.quant_attention.attention_config(1024, 72, 1024)
    out = pk.quant_attention(q, k, v, pv=pv)
    ref = reference(q, k, v, None, pv=pv, kv_block=cfg.block_n, q_mean_block=cfg.block_m)
    assert rel_err(out, ref) < 5e-3
    assert cosine(out, exact_attention(q, k, v, None)) > 0.999

"""The Mosaic GPU quantized attention (``ops/quant_attention/mosaic.py``) without a GPU: Mosaic GPU's CPU
interpreter (threads, barriers, TMA and shared memory simulated, race detector on) against the reference on
fresh random inputs, and the lowering to a CUDA custom call at the model shapes (catches layout, swizzle
and wgmma-shape errors before the GPU run)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._compat import plgpu
from pallas_kernels.ops.quant_attention import MosaicAttentionConfig
from pallas_kernels.ops.quant_attention import mosaic
from pallas_kernels.testing import requires_gpu
from tests.kernels.test_quant_attention import qkv_inputs, rel_err

needs_mosaic = pytest.mark.skipif(plgpu is None, reason="Mosaic GPU not importable in this JAX")
reference = jax.jit(pk.quant_attention_ref, static_argnames=("pv", "q_block", "k_block", "kv_block", "smooth_k",
                                                             "smooth_q", "q_mean_block"))


def qkv(seed: int, b: int, nq: int, nk: int, h: int, d: int, masked: bool):
    """``qkv_inputs`` with a query offset that drifts along the sequence (what Q smoothing removes)."""
    q, k, v, mask = qkv_inputs(seed, b, nq, nk, h, d, masked=masked)
    rng = np.random.default_rng(seed + 1)
    drift = 2.0 * rng.standard_normal((1, 1, h, d)) + np.linspace(0, 1, nq)[None, :, None, None] * \
        rng.standard_normal((1, 1, h, d))
    return q + jnp.asarray(drift, q.dtype), k, v, mask


# (name, (B, Nq, Nk, H, D), masked, smooth_q, config): padded queries and keys, the key mask, D = 72 (96 int8
# lanes, 32-byte swizzle) and 40 (128 lanes), several key blocks through a ring of 2 or 3 slots
INTERPRET_CASES = [
    ("d72-pixart-layout", (1, 128, 384, 1, 72), False, True, MosaicAttentionConfig()),
    ("d40-masked-padded-qk128", (1, 200, 130, 1, 40), True, True, MosaicAttentionConfig(qk_pad=128)),
    ("d64-kv64-3stages-no-q-smoothing", (1, 128, 320, 2, 64), False, False,
     MosaicAttentionConfig(block_kv=64, stages=3, qk_pad=64)),
]


@needs_mosaic
@pytest.mark.skipif(mosaic.interpret_params() is None, reason="no Mosaic GPU interpreter in this JAX")
@pytest.mark.parametrize("name,shape,masked,smooth_q,cfg", INTERPRET_CASES, ids=[c[0] for c in INTERPRET_CASES])
def test_interpreted_kernel_matches_reference(name, shape, masked, smooth_q, cfg):
    b, nq, nk, h, d = shape
    q, k, v, mask = qkv(sum(shape), b, nq, nk, h, d, masked)
    out = mosaic.mosaic_quant_attention(q, k, v, mask, smooth_q=smooth_q, cfg=cfg, interpret=True)
    if jax.__version_info__ < (0, 11):  # JAX 0.11.2's detector flags every reuse of a TMA ring slot (see races_found)
        assert not mosaic.races_found()
    ref = reference(q, k, v, mask, pv="bf16", kv_block=cfg.block_kv, smooth_q=smooth_q, q_mean_block=cfg.q_mean_block)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 2e-3, rel_err(out, ref)  # same integers; float32 sums in another order


# (name, (B, Nq, Nk, H, D), masked, config): PixArt 1024 px, STDiT spatial, STDiT3 720p (padded), the PixArt
# cross-attention (masked, 120 keys) and the tiling alternatives of bench_attention
LOWERING_CASES = [
    ("pixart1024", (2, 4096, 4096, 16, 72), False, MosaicAttentionConfig()),
    ("stdit-spatial", (32, 1024, 1024, 16, 72), False, MosaicAttentionConfig()),
    ("stdit3-720p-padded", (30, 3600, 3600, 16, 72), False, MosaicAttentionConfig(block_kv=64, stages=4)),
    ("pixart-cross-masked", (2, 4096, 120, 16, 72), True, MosaicAttentionConfig(qk_pad=128)),
    ("pixart1024-kv256-s3", (2, 4096, 4096, 16, 72), False, MosaicAttentionConfig(block_kv=256, stages=3)),
]


@needs_mosaic
@pytest.mark.parametrize("name,shape,masked,cfg", LOWERING_CASES, ids=[c[0] for c in LOWERING_CASES])
def test_kernel_lowers_for_cuda(name, shape, masked, cfg):
    S = jax.ShapeDtypeStruct
    b, nq, nk, h, d = shape
    args = [S((b, nq, h, d), jnp.bfloat16), S((b, nk, h, d), jnp.bfloat16), S((b, nk, h, d), jnp.bfloat16)]
    if masked:
        args.append(S((b, nk), jnp.bool_))

    def f(q, k, v, m=None):
        return mosaic.mosaic_quant_attention(q, k, v, m, cfg=cfg)

    text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text


def test_config_and_dispatch():
    with pytest.raises(ValueError, match="block_kv=96"):
        MosaicAttentionConfig(block_kv=96).check()
    with pytest.raises(ValueError, match="qk_pad=16"):
        MosaicAttentionConfig(qk_pad=16).check()
    assert mosaic.qk_width(72, MosaicAttentionConfig()) == 96
    assert mosaic.qk_width(72, MosaicAttentionConfig(qk_pad=128)) == 128
    q, k, v, _ = qkv(3, 1, 24, 24, 1, 16, False)
    if jax.default_backend() != "gpu":  # off GPU "mosaic" is the reference
        np.testing.assert_array_equal(np.asarray(pk.quant_attention(q, k, v, pv="bf16", backend="mosaic")),
                                      np.asarray(pk.quant_attention(q, k, v, pv="bf16", backend="xla")))


@requires_gpu
def test_kernel_on_gpu_matches_reference():
    q, k, v, _ = qkv(11, 2, 1024, 1024, 4, 72, False)
    cfg = MosaicAttentionConfig()
    out = pk.quant_attention(q, k, v, pv="bf16", backend="mosaic", mosaic_config=cfg)
    ref = reference(q, k, v, None, pv="bf16", kv_block=cfg.block_kv, q_mean_block=cfg.q_mean_block)
    assert rel_err(out, ref) < 5e-3

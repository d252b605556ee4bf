"""Q-DiT's group GEMM (``pallas_kernels.group_gemm``): the Pallas-Triton kernel in interpret mode vs its
jnp reference on fresh random codes — integer sums exactly, float results within 1e-5 relative."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._compat import pltriton
from pallas_kernels.ops.w4a8_linear import GroupTiling
from pallas_kernels.ops.w4a8_linear.triton import fit_group_tiling, fold_weights

pytestmark = pytest.mark.skipif(pltriton is None, reason="Pallas-Triton not importable in this JAX")


def _case(seed, m, k, n, gs, packed, x_zero, w_zero):
    """Fresh random codes, scales and zero points (numpy draws: no compile per shape)."""
    r = np.random.default_rng(seed)
    g = k // gs
    w = r.integers(-8, 8, (n, k)) if packed else r.integers(-128, 128, (n, k))
    w = pk.pack_int4(jnp.asarray(w, jnp.int8)) if packed else jnp.asarray(w, jnp.int8)
    return dict(
        xq=jnp.asarray(r.integers(-128, 128, (m, k)), jnp.int8), x_scale=jnp.asarray(r.uniform(1e-3, 1e-2, (m, g)), jnp.float32),
        w=w, w_scale=jnp.asarray(r.uniform(1e-3, 1e-2, (n, g)), jnp.float32),
        bias=jnp.asarray(r.normal(size=n), jnp.float32),
        x_zero=jnp.asarray(r.integers(-127, 129, (m, g)), jnp.int32) if x_zero else None,
        w_zero=jnp.asarray(r.integers(-7, 9, (n, g)), jnp.int32) if w_zero else None)


@pytest.mark.parametrize("gs,k,packed,x_zero,w_zero", [
    (64, 192, True, True, True),    # packed int4, both sides asymmetric (the qdit-w4a8 preset)
    (192, 576, True, False, False),  # group 192: 32-byte weight tiles
    (32, 96, False, False, True),    # int8 codes (qdit-w6a8), asymmetric weights only
])
def test_kernel_matches_reference(gs, k, packed, x_zero, w_zero):
    c = _case(gs + k, 5, k, 32, gs, packed, x_zero, w_zero)
    ones = dict(c, x_scale=jnp.ones_like(c["x_scale"]), w_scale=jnp.ones_like(c["w_scale"]), bias=None)
    y = pk.group_gemm(**ones, backend="triton", out_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(pk.group_gemm_ref(**ones)))  # the int32 sums
    y = pk.group_gemm(**c, backend="triton", out_dtype=jnp.float32)
    ref = pk.group_gemm_ref(**c)
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < 1e-5


@pytest.mark.parametrize("tiling,gs,k", [
    (GroupTiling(unpack="kernel"), 64, 128),           # nibbles split in registers, both int32 zero terms
    (GroupTiling(bk=32, skew=True), 64, 192),          # XLA-unpacked, 2 dot steps per group, skewed epilogue
])
def test_tilings_match_reference(tiling, gs, k):
    """Every unpack/skew variant the sweep may store: exact integer sums, fresh random codes."""
    c = _case(k + tiling.bk, 6, k, 32, gs, True, True, True)
    ones = dict(c, x_scale=jnp.ones_like(c["x_scale"]), w_scale=jnp.ones_like(c["w_scale"]), bias=None)
    y = pk.group_gemm(**ones, backend="triton", out_dtype=jnp.float32, tiling=tiling)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(pk.group_gemm_ref(**ones)))
    y = pk.group_gemm(**c, backend="triton", out_dtype=jnp.float32, tiling=tiling)
    ref = pk.group_gemm_ref(**c)
    assert float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)) < 1e-5


def test_fold_weights():
    """XLA unpacking folds int4 zero points into the int8 codes: q + z per group."""
    c = _case(7, 1, 128, 8, 32, True, False, True)
    q = np.asarray(pk.unpack_int4(c["w"]), np.int32).reshape(8, 4, 32) + np.asarray(c["w_zero"])[..., None]
    np.testing.assert_array_equal(np.asarray(fold_weights(c["w"], c["w_zero"], 4)), q.reshape(8, 128))


def test_reference_is_the_dequantized_product():
    """The reference's integer form equals dequantize-both-sides-then-matmul (float64 numpy)."""
    c = _case(3, 5, 128, 16, 32, True, True, True)
    g, gs = 4, 32
    wq = np.asarray(pk.unpack_int4(c["w"]), np.float64).reshape(16, g, gs)
    xq = np.asarray(c["xq"], np.float64).reshape(5, g, gs)
    xd = (xq + np.asarray(c["x_zero"])[..., None]) * np.asarray(c["x_scale"], np.float64)[..., None]
    wd = (wq + np.asarray(c["w_zero"])[..., None]) * np.asarray(c["w_scale"], np.float64)[..., None]
    exact = xd.reshape(5, -1) @ wd.reshape(16, -1).T + np.asarray(c["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(jax.jit(pk.group_gemm_ref)(**c)), exact, rtol=1e-5, atol=1e-6)


def test_epilogue_splits_and_tiling():
    c = _case(5, 7, 128, 64, 64, True, True, False)
    res = jnp.asarray(np.random.default_rng(1).normal(size=(7, 64)), jnp.float32)
    y = pk.group_gemm(**c, backend="xla", activation="gelu_tanh", residual=res, gate=jnp.full((1, 64), 0.5),
                      out_dtype=jnp.float32)
    ref = res + 0.5 * jax.nn.gelu(pk.group_gemm_ref(**c), approximate=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
    parts = pk.group_gemm(**c, backend="xla", splits=2)
    assert len(parts) == 2 and parts[0].shape == (7, 32) and parts[0].dtype == jnp.bfloat16
    in_kernel = GroupTiling(unpack="kernel")
    for gs in (32, 64, 128, 192, 288):  # int8 weights, or int4 unpacked by XLA: every Q-DiT group size fits
        assert pk.group_gemm_tiling(256, 4 * 288, 1152, gs, False) is not None
        assert pk.group_gemm_tiling(256, 4 * 288, 1152, gs, True) is not None
        # int4 unpacked in the kernel: 16-byte tiles (groups 32, 288) gave wrong sums on an H100
        assert (fit_group_tiling(in_kernel, 256, 4 * 288, 1152, gs, True) is None) == (gs in (32, 288))
    assert pk.group_gemm_tiling(256, 96, 64, 24, True) is None  # 24-column tiles: the reference runs
    with pytest.raises(ValueError, match="x_zero must be"):
        pk.group_gemm(**dict(c, x_zero=c["x_zero"][:, :1]))

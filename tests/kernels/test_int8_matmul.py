"""int8 GEMM: every backend must equal lax.dot_general(int8, int8, int32) exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pallas_kernels as pk
from pallas_kernels.ops.int8_matmul import mosaic
from pallas_kernels.testing import rand_int, rand_scale, requires_gpu
from tests.kernels.base import backend_params


def _ref(xq, wq):
    return jax.lax.dot_general(xq, wq, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


@pytest.mark.parametrize("backend", backend_params("int8_matmul"))
@pytest.mark.parametrize("m", [1, 7, 130, 240])
def test_int8_matmul_exact(backend, m):
    k, n = 256, 128
    xq = rand_int(m, (m, k), -127, 127)
    wq = rand_int(1000 + m, (n, k), -127, 127)
    y = pk.int8_matmul(xq, wq, backend=backend)
    assert y.dtype == jnp.int32 and y.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_extreme_values_do_not_overflow():
    k = 1152  # 1152 * 127 * 127 fits int32 easily; check sign handling at the extremes
    xq = jnp.full((3, k), -127, jnp.int8).at[1].set(127)
    wq = jnp.full((64, k), 127, jnp.int8).at[::2].set(-127)
    y = pk.int8_matmul(xq, wq, backend="triton")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 70))
def test_triton_scaled_epilogue_matches_reference(seed, m):
    k, n = 128, 64
    xq = rand_int(seed, (m, k), -127, 127)
    wq = rand_int(seed + 1, (n, k), -127, 127)
    xs = rand_scale(seed + 2, (m, 1))
    ws = rand_scale(seed + 3, (n,))
    bias = jax.random.normal(jax.random.key(seed + 4), (n,))
    y = pk.int8_gemm(xq, wq, xs, ws, bias, out_dtype=jnp.float32, backend="triton")
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, bias, jnp.float32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_unsupported_shape_falls_back_to_xla():
    xq = rand_int(5, (5, 40), -127, 127)  # K=40: no power-of-two tile >= 16 divides it
    wq = rand_int(6, (24, 40), -127, 127)
    for backend in ("triton", "mosaic", "auto"):
        y = pk.int8_matmul(xq, wq, backend=backend)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.int8), jnp.zeros((4, 16), jnp.int8))
    with pytest.raises(TypeError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.float32), jnp.zeros((4, 8), jnp.int8))
    with pytest.raises(ValueError):
        pk.int8_matmul(jnp.zeros((4, 8), jnp.int8), jnp.zeros((4, 8), jnp.int8), backend="cuda")


def test_mosaic_config_fit():
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=192, tk=128, stages=3, ws=True, chain=True)
    assert mosaic.supports(1152, 3456, cfg)
    fitted = mosaic.fit_config(cfg, 1152, 2304 + 64)
    assert 2368 % fitted.tn == 0 and not fitted.chain


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("m", [1, 7, 130, 240, 4096])
@pytest.mark.parametrize("k,n", [(1152, 3456), (4608, 1152), (1152, 1152)])
def test_mosaic_int8_matmul_gpu_exact(m, k, n):
    xq = rand_int(m, (m, k), -127, 127)
    wq = rand_int(m + 1, (n, k), -127, 127)
    y = pk.int8_matmul(xq, wq, backend="mosaic")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(_ref(xq, wq)))


def test_mosaic_configs_are_fitted_to_shared_memory():
    """The stored bf16-output config overflows Hopper's 227 KiB with a float32 output tile (the
    Mosaic compiler reported 278576 bytes); the fit drops stages, then narrows N tiles."""
    from pallas_kernels.ops.int8_matmul import mosaic

    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=3, ws=True, delay_release=0, chain=True)
    assert mosaic.smem_bytes(cfg, 4) == 278576 - 48  # the compiler's count minus its barriers
    assert mosaic.fit_smem(cfg, 1152, 2) == cfg  # bf16 out: unchanged
    fitted = mosaic.fit_smem(cfg, 1152, 4)
    assert fitted.stages == 2 and fitted.tn == 128
    assert mosaic.smem_bytes(fitted, 4) + 1024 <= mosaic.SMEM_LIMIT
    huge = mosaic.MosaicGemmConfig(tm=256, tn=256, tk=128, stages=2, ws=True)
    assert mosaic.fit_smem(huge, 96, 4) is None  # N = 96 cannot take a narrower tile: no fit

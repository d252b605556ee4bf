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
from pallas_kernels._compat import plgpu
from pallas_kernels.testing import assert_bf16_close, rand_int, rand_scale, requires_gpu
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


# ------------------------------------------------------------------ the fused epilogue's extras


def _epilogue_case(seed, m=64, k=128, n=64, groups=2):
    xq = rand_int(seed, (m, k), -127, 127)
    wq = rand_int(seed + 1, (n, k), -128, 127)  # asymmetric codes use the full int8 range
    zw = rand_int(seed + 2, (n,), -127, 127).astype(jnp.int32)
    rs = jnp.sum(xq.astype(jnp.int32), axis=-1, keepdims=True)
    extras = dict(
        residual=jax.random.normal(jax.random.key(seed + 3), (m, n)).astype(jnp.bfloat16),
        gate=jax.random.normal(jax.random.key(seed + 4), (groups, n)),
    )
    return xq, wq, zw, rs, extras


@pytest.mark.parametrize("backend", backend_params("int8_gemm_epilogue", ("triton", "mosaic")))
def test_zero_point_term_is_exact(backend):
    """``acc + x_row_sum · w_zero`` in int32: with unit scales and K = 128 every value is an integer
    below 2^24, so the float32 output shows the int32 result exactly."""
    xq, wq, zw, rs, _ = _epilogue_case(11)
    m, n = xq.shape[0], wq.shape[0]
    y = pk.int8_gemm(xq, wq, jnp.ones((m, 1)), jnp.ones((n,)), out_dtype=jnp.float32, backend=backend,
                     w_zero=zw, x_row_sum=rs)
    exact = pk.zero_point_ref(_ref(xq, wq), zw, rs)
    assert int(jnp.max(jnp.abs(exact))) < 2**24
    np.testing.assert_array_equal(np.asarray(y), np.asarray(exact, np.float32))
    # = the GEMM with the dequantized weight (q + z)
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(_ref(xq.astype(jnp.int32), wq.astype(jnp.int32) + zw[:, None])))


def test_gate_spans_that_do_not_hold_whole_tiles_are_applied_after_the_kernel():
    """5 rows per gate row: no kernel row tile fits, the dispatch applies the gate after the GEMM (the
    rank-1 term stays in the kernel)."""
    xq, wq, zw, rs, extras = _epilogue_case(31, m=15, groups=3)
    xs, ws = rand_scale(32, (15, 1)), rand_scale(33, (wq.shape[0],))
    extras["rank1"] = (jax.random.normal(jax.random.key(34), (15,)), jax.random.normal(jax.random.key(35), (64,)))
    y = pk.int8_gemm(xq, wq, xs, ws, None, out_dtype=jnp.float32, backend="triton", w_zero=zw, x_row_sum=rs,
                     **extras)
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, None, jnp.float32, w_zero=zw, x_row_sum=rs, **extras)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="go together"):
        pk.int8_gemm(xq, wq, xs, ws, w_zero=zw)
    with pytest.raises(ValueError, match="G dividing"):
        pk.int8_gemm(xq, wq, xs, ws, gate=extras["gate"][:2])


@pytest.mark.skipif(plgpu is None, reason="Mosaic GPU not importable in this JAX")
def test_mosaic_epilogue_lowers_for_cuda():
    """The Mosaic GPU kernels with every epilogue operand (rank-1 term included) lower to a CUDA custom call on this host
    (no GPU needed: catches layout/lowering errors before the GPU run)."""
    S = jax.ShapeDtypeStruct
    m, k, n = 512, 256, 256
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=2, ws=True, delay_release=0, chain=True)

    def f(xq, wq, xs, ws, b, zw, rs, res, gate, u, beta):
        return mosaic.mosaic_int8_gemm(xq, wq, xs, ws, b, cfg=cfg, out_dtype=jnp.bfloat16, activation="gelu_tanh",
                                       w_zero=zw, x_row_sum=rs, residual=res, gate=gate, rank1=(u, beta))

    args = (S((m, k), jnp.int8), S((n, k), jnp.int8), S((m, 1), jnp.float32), S((n,), jnp.float32),
            S((n,), jnp.float32), S((n,), jnp.int32), S((m, 1), jnp.int32), S((m, n), jnp.bfloat16),
            S((2, n), jnp.float32), S((m, 1), jnp.float32), S((n,), jnp.float32))
    orig = mosaic._num_sms
    mosaic._num_sms = lambda: 132
    try:
        text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    finally:
        mosaic._num_sms = orig
    assert "mosaic_gpu" in text


def test_rank1_term_joins_the_epilogue_in_order():
    """``rank1=(u, beta)``: ``u[m] · beta[n]`` after zero point, scales and bias, before the activation, then
    the gated residual (Triton interpret vs the reference; the reference vs the formula in numpy)."""
    m, groups = 64, 2
    xq, wq, zw, rs, extras = _epilogue_case(41, m=m, groups=groups)
    n = wq.shape[0]
    xs, ws = rand_scale(42, (m, 1)) * 30, rand_scale(43, (n,)) * 30
    bias = jax.random.normal(jax.random.key(44), (n,))
    u = jax.random.normal(jax.random.key(45), (m,)) * 3
    beta = jax.random.normal(jax.random.key(46), (n,))
    kw = dict(activation="gelu_tanh", w_zero=zw, x_row_sum=rs, rank1=(u, beta), **extras)
    y = pk.int8_gemm(xq, wq, xs, ws, bias, out_dtype=jnp.float32, backend="triton", **kw)
    ref = pk.scaled_epilogue_ref(_ref(xq, wq), xs, ws, bias, jnp.float32, **kw)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-5)
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    lin = (f64(_ref(xq, wq)) + f64(rs) * f64(zw)[None]) * f64(xs) * f64(ws)[None] + f64(bias)[None]
    lin = lin + f64(u)[:, None] * f64(beta)[None]
    gelu = np.asarray(jax.nn.gelu(jnp.asarray(lin, jnp.float32), approximate=True), np.float64)
    want = f64(extras["residual"]) + np.repeat(f64(extras["gate"]), m // groups, axis=0) * gelu
    np.testing.assert_allclose(np.asarray(ref), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="rank1 beta"):
        pk.int8_gemm(xq, wq, xs, ws, rank1=(u, beta[:-1]))
    with pytest.raises(ValueError, match="needs the scales"):
        pk.int8_gemm(xq, wq, rank1=(u, beta))

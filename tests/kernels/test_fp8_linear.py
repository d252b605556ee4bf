"""FP8 (e4m3) W8A8: the e4m3 quantizers (plain and rotated), the GEMM on e4m3 operands (Triton in
interpret mode on the CPU, Mosaic GPU lowered for CUDA here and run on the GPU) and the linear with its
fused epilogue, against the jnp references (``ops/fp8_linear/reference.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._compat import plgpu
from pallas_kernels.ops.int8_matmul import mosaic
from pallas_kernels.ops.int8_matmul.reference import gemm_ref
from pallas_kernels.testing import assert_bf16_close, rand_x
from tests.kernels.base import backend_params

FP8 = pk.FP8


def _e4m3_close(q, qr, max_flips: int = 2):
    """e4m3 codes equal but for at most ``max_flips`` neighbours (another summation order)."""
    a, b = np.asarray(q, np.float32), np.asarray(qr, np.float32)
    d = np.abs(a - b)
    assert np.all(d <= np.maximum(np.abs(a), np.abs(b)) * 2.0**-3 + 2.0**-9)  # one e4m3 step
    assert int((d > 0).sum()) <= max_flips + 1e-4 * d.size


def test_reference_e4m3_rule():
    w = rand_x(1, 6, 64, jnp.float32, zero_row=2)
    q, s = pk.quantize_fp8_weight_ref(w)
    assert q.dtype == FP8 and s.shape == (6,)
    assert float(s[2]) == 1.0 and not np.any(np.asarray(q[2], np.float32))
    qf = np.asarray(q, np.float32)
    np.testing.assert_allclose(np.abs(qf).max(1)[[0, 1, 3]], 448.0)  # the absmax lands on e4m3's max
    np.testing.assert_allclose(np.asarray(s)[[0, 1]], np.abs(np.asarray(w)).max(1)[[0, 1]] / 448, rtol=1e-6)
    rel = np.linalg.norm(qf * np.asarray(s)[:, None] - np.asarray(w)) / np.linalg.norm(np.asarray(w))
    assert rel < 0.04  # 3 mantissa bits
    with pytest.raises(ValueError, match="int8 codes only"):
        pk.quantize_per_token_ref(w, row_sum=True, dtype=FP8)


def test_triton_quantizers_emit_e4m3():
    """The per-token quantizer (exact: same division, RTNE conversion) and the rotating one."""
    x = rand_x(3, 9, 256, zero_row=4)
    q, s = pk.quantize_per_token(x, backend="triton", dtype=FP8)
    qr, sr = pk.quantize_per_token_ref(x, dtype=FP8)
    assert q.dtype == FP8
    np.testing.assert_array_equal(np.asarray(q, np.float32), np.asarray(qr, np.float32))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(sr))
    base = np.where(np.random.default_rng(4).random((36, 36)) < 0.5, -1.0, 1.0)
    signs = jnp.where(jax.random.bernoulli(jax.random.key(5), 0.5, (144,)), 1.0, -1.0)
    xr = rand_x(6, 5, 144)
    q, s = pk.rotate_quantize(xr, base, signs, backend="triton", dtype=FP8)
    qr, sr = pk.rotate_quantize_ref(xr, base, signs, dtype=FP8)
    assert q.dtype == FP8
    _e4m3_close(q, qr)
    np.testing.assert_allclose(np.asarray(s), np.asarray(sr), rtol=1e-6)


@pytest.mark.parametrize("backend", backend_params("fp8_linear", ("triton", "mosaic")))
def test_linear_with_rotation_and_fused_epilogue(backend):
    """Rotation inside the e4m3 quantizer, GELU, gated residual (two 16-row gate slabs); the bare GEMM."""
    m, k, n = 32, 144, 96
    x = rand_x(7, m, k)
    w = jax.random.normal(jax.random.key(8), (n, k)) * 0.05
    wq, ws = pk.quantize_fp8_weight_ref(w)
    bias = jax.random.normal(jax.random.key(9), (n,))
    base = np.where(np.random.default_rng(10).random((36, 36)) < 0.5, -1.0, 1.0)
    signs = jnp.where(jax.random.bernoulli(jax.random.key(11), 0.5, (k,)), 1.0, -1.0)
    extras = dict(residual=rand_x(12, m, n), gate=jax.random.normal(jax.random.key(13), (2, n)))
    xrot = pk.ops.rotate_quantize.rotate_ref(x, base, signs)
    y = pk.fp8_linear(x, wq, ws, bias, backend=backend, rotation=(base, signs), activation="gelu_tanh", **extras)
    assert_bf16_close(y, pk.fp8_linear_ref(xrot, wq, ws, bias, activation="gelu_tanh", **extras))
    xq, xs = pk.quantize_per_token_ref(x, dtype=FP8)
    acc = pk.fp8_gemm(xq, wq, backend=backend)  # bare GEMM: float32 accumulation
    assert acc.dtype == jnp.float32
    # e4m3 products are exact in float32, their sums are not: the kernel's K-tile order differs from XLA's, so the
    # bound is float32 summation's own (K roundings of at most 2^-24 of the running |sum|), not a fixed tolerance
    xf, wf = np.abs(np.asarray(xq, np.float32)), np.abs(np.asarray(wq, np.float32))
    bound = k * 2.0**-24 * (xf @ wf.T)
    err = np.abs(np.asarray(acc) - np.asarray(gemm_ref(xq, wq)))
    assert (err <= bound).all(), f"max error {err.max()} vs summation bound {bound[err.argmax() // n, err.argmax() % n]}"
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        pk.fp8_linear(x, wq.astype(jnp.float32), ws)
    with pytest.raises(ValueError, match="zero points"):
        pk.ops.int8_matmul.scaled_gemm(xq, wq, xs, ws, w_zero=jnp.zeros((n,), jnp.int32),
                                       x_row_sum=jnp.zeros((m, 1), jnp.int32))


@pytest.mark.skipif(plgpu is None, reason="Mosaic GPU not importable in this JAX")
def test_mosaic_fp8_lowers_for_cuda():
    """The wgmma kernel on e4m3 operands (float32 accumulator) lowers to a CUDA custom call here."""
    S = jax.ShapeDtypeStruct
    m, k, n = 512, 256, 256
    cfg = mosaic.MosaicGemmConfig(tm=128, tn=128, tk=128, stages=2, ws=True, delay_release=0, chain=True)

    def f(xq, wq, xs, ws, res, gate):
        return mosaic.mosaic_int8_gemm(xq, wq, xs, ws, cfg=cfg, out_dtype=jnp.bfloat16, residual=res, gate=gate)

    orig = mosaic._num_sms
    mosaic._num_sms = lambda: 132
    try:
        text = jax.jit(f).trace(S((m, k), FP8), S((n, k), FP8), S((m, 1), jnp.float32), S((n,), jnp.float32),
                                S((m, n), jnp.bfloat16), S((2, n), jnp.float32)).lower(
            lowering_platforms=("cuda",)).as_text()
    finally:
        mosaic._num_sms = orig
    assert "mosaic_gpu" in text

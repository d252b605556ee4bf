"""W8A8 / W4A8 linears and the int4 packing contract (CPU: XLA + interpret-mode Triton)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pallas_kernels as pk
from pallas_kernels.testing import assert_bf16_close, rand_int, rand_scale, rand_x, requires_gpu
from tests.kernels.base import backend_params

K, N = 256, 128


def _case(seed, m, k=K, n=N, lo=-127, hi=127):
    x = rand_x(seed, m, k, zero_row=m // 2 if m > 2 else None)
    wq = rand_int(seed + 1, (n, k), lo, hi)
    ws = rand_scale(seed + 2, (n,))
    bias = jax.random.normal(jax.random.key(seed + 3), (n,))
    return x, wq, ws, bias


@pytest.mark.parametrize(
    "backend,m", [("xla", 1), ("xla", 130), ("triton", 1), ("triton", 7), ("triton", 130),
                  ("auto", 7)])
def test_w8a8_matches_reference(backend, m):
    x, wq, ws, bias = _case(m, m)
    y = pk.w8a8_linear(x, wq, ws, bias, backend=backend)
    ref = pk.w8a8_linear_ref(x, wq, ws, bias)
    assert y.shape == (m, N) and y.dtype == jnp.bfloat16
    assert_bf16_close(y, ref)
    # Against the float32 fake-quant form (independent formulation).
    assert_bf16_close(y, pk.w8a8_linear_dequant_ref(x, wq, ws, bias))
    if m > 2:  # zero row -> exactly the bias, never NaN
        np.testing.assert_array_equal(np.asarray(y[m // 2]), np.asarray(bias.astype(y.dtype)))


@pytest.mark.parametrize("backend,m", [("xla", 130), ("triton", 7), ("triton", 130)])
def test_w8a8_fused_gelu_epilogue(backend, m):
    """activation="gelu_tanh": the kernels' exp-form GELU equals jax.nn.gelu(approximate=True)."""
    x, wq, ws, bias = _case(40 + m, m)
    ws = ws * 30.0  # outputs of order 1-10, where GELU is far from linear
    y = pk.w8a8_linear(x, wq, ws, bias, backend=backend, activation="gelu_tanh", out_dtype=jnp.float32)
    lin = pk.w8a8_linear_ref(x, wq, ws, bias, out_dtype=jnp.float32)
    ref = pk.w8a8_linear_ref(x, wq, ws, bias, out_dtype=jnp.float32, activation="gelu_tanh")
    np.testing.assert_allclose(np.asarray(ref), np.asarray(jax.nn.gelu(lin, approximate=True)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-5)
    assert float(jnp.min(lin)) < -3 and float(jnp.max(lin)) > 3  # both saturated tails exercised
    from pallas_kernels.ops.int8_matmul.reference import apply_activation

    for form in ("exp", "tanh"):  # the two in-kernel formulas (tanh: Mosaic GPU approx_math path)
        np.testing.assert_allclose(np.asarray(apply_activation(lin, "gelu_tanh", in_kernel=True, form=form)),
                                   np.asarray(ref), rtol=1e-5, atol=1e-5)
    w4 = rand_int(3, (N, K), -8, 7)
    y4 = pk.w4a8_linear(x, pk.pack_int4(w4), ws, bias, backend=backend, activation="gelu_tanh")
    assert_bf16_close(y4, pk.w4a8_linear_ref(x, pk.pack_int4(w4), ws, bias, activation="gelu_tanh"))
    with pytest.raises(ValueError, match="unsupported epilogue activation"):
        pk.w8a8_linear(x, wq, ws, bias, backend=backend, activation="relu")


@pytest.mark.parametrize("backend", backend_params("w8a8_linear"))
def test_splits_return_the_column_blocks_of_one_output(backend):
    """splits=3 (fused qkv -> q, k, v): three GEMMs on one quantized x == the unsplit output's blocks."""
    m, n = 9, 3 * 64
    x, wq, ws, bias = _case(70, m, n=n)
    full = pk.w8a8_linear(x, wq, ws, bias, backend=backend)
    parts = pk.w8a8_linear(x, wq, ws, bias, backend=backend, splits=3)
    assert isinstance(parts, tuple) and len(parts) == 3
    for p, f in zip(parts, jnp.split(full, 3, axis=-1)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(f))
    w4 = pk.pack_int4(rand_int(71, (n, K), -8, 7))
    for scales in (ws, rand_scale(72, (n, K // 128))):  # per channel, per group of 128
        full = pk.w4a8_linear(x, w4, scales, bias, backend=backend)
        parts = pk.w4a8_linear(x, w4, scales, bias, backend=backend, splits=3)
        for p, f in zip(parts, jnp.split(full, 3, axis=-1)):
            np.testing.assert_array_equal(np.asarray(p), np.asarray(f))
    with pytest.raises(ValueError, match="do not split"):
        pk.w8a8_linear(x, wq, ws, bias, backend=backend, splits=5)


def test_asymmetric_weights_and_gated_residual_in_the_epilogue():
    """``w_zero_point``: the quantizer's code sums meet the zero points in the GEMM epilogue (Triton,
    interpret); GELU and ``residual``/``gate`` (one gate row per 16-token slab) fused too; W4A8 per
    channel."""
    m = 32
    x, wq, ws, bias = _case(80, m, lo=-128, hi=127)
    zw = rand_int(81, (N,), -127, 127).astype(jnp.int32)
    extras = dict(residual=rand_x(82, m, N), gate=jax.random.normal(jax.random.key(83), (2, N)),
                  activation="gelu_tanh")
    y = pk.w8a8_linear(x, wq, ws * 10, bias, backend="triton", w_zero_point=zw, **extras)
    assert_bf16_close(y, pk.w8a8_linear_ref(x, wq, ws * 10, bias, w_zero_point=zw, **extras))
    w4 = pk.pack_int4(rand_int(84, (N, K), -8, 7))
    z4 = rand_int(85, (N,), -7, 8).astype(jnp.int32)
    y4 = pk.w4a8_linear(x, w4, ws, bias, backend="triton", w_zero_point=z4)
    assert_bf16_close(y4, pk.w4a8_linear_ref(x, w4, ws, bias, w_zero_point=z4))
    with pytest.raises(ValueError, match="w_zero_point must be"):
        pk.w8a8_linear(x, wq, ws, bias, w_zero_point=zw[:-1])
    with pytest.raises(ValueError, match="not with splits"):
        pk.w8a8_linear(x, wq, ws, bias, splits=2, residual=extras["residual"])


def test_w8a8_no_bias_f32_out_and_f32_input():
    x, wq, ws, _ = _case(11, 240)
    x = x.astype(jnp.float32)
    y = pk.w8a8_linear(x, wq, ws, None, out_dtype=jnp.float32, backend="triton")
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(pk.w8a8_linear_ref(x, wq, ws, None,
                               out_dtype=jnp.float32)), rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(y[120]))


def test_w8a8_error_vs_float_is_small():
    x, wq, ws, bias = _case(21, 64)
    y = pk.w8a8_linear(x, wq, ws, bias, out_dtype=jnp.float32)
    wf = wq.astype(jnp.float32) * ws[:, None]
    yf = jnp.dot(x.astype(jnp.float32), wf.T, precision="highest") + bias
    rel = float(jnp.linalg.norm(y - yf) / jnp.linalg.norm(yf))
    assert rel < 2e-2  # 8-bit activation quantization error only


def test_w8a8_rejects_bad_shapes():
    x, wq, ws, bias = _case(3, 4)
    with pytest.raises(ValueError):
        pk.w8a8_linear(x.reshape(2, 2, K), wq, ws)
    with pytest.raises(ValueError):
        pk.w8a8_linear(x[:, :-2], wq, ws)
    with pytest.raises(TypeError):
        pk.w8a8_linear(x, wq.astype(jnp.int32), ws)


def test_pack_int4_layout_and_roundtrip():
    v = jnp.array([[-8, 7, 1, -1, 0, 3]], jnp.int8)
    p = pk.pack_int4(v)
    assert p.dtype == jnp.uint8 and p.shape == (1, 3)
    # byte j = (v[2j] & 0xF) | ((v[2j+1] & 0xF) << 4)
    assert p.tolist() == [[0x8 | (0x7 << 4), 0x1 | (0xF << 4), 0x0 | (0x3 << 4)]]
    w = rand_int(5, (3, 4, 64), -8, 7)
    np.testing.assert_array_equal(np.asarray(pk.unpack_int4(pk.pack_int4(w))), np.asarray(w))
    with pytest.raises(ValueError):
        pk.pack_int4(jnp.zeros((2, 3), jnp.int8))


def _pack_int4_formula(v: np.ndarray) -> np.ndarray:
    """The layout contract in numpy int32 arithmetic (the formulation of the former
    ``vidq_jax/quant/_int4.py``, whose callers now use ``pallas_kernels.pack_int4``)."""
    w = v.astype(np.int32).reshape(v.shape[:-1] + (v.shape[-1] // 2, 2))
    return ((w[..., 0] & 0xF) | ((w[..., 1] & 0xF) << 4)).astype(np.uint8)


def _unpack_int4_formula(p: np.ndarray) -> np.ndarray:
    b = p.astype(np.int32) & 0xFF
    lo, hi = b & 0xF, (b >> 4) & 0xF
    lo, hi = np.where(lo >= 8, lo - 16, lo), np.where(hi >= 8, hi - 16, hi)
    return np.stack([lo, hi], axis=-1).reshape(p.shape[:-1] + (2 * p.shape[-1],)).astype(np.int8)


def test_pack_int4_bit_identical_to_the_layout_formula():
    """THE int4 packer on random int4 values (and every nibble pair / every byte): bit for bit the
    numpy formula, for int8 and int32 inputs, numpy and jax arrays, leading dims; unpacking inverts it."""
    rng = np.random.default_rng(4)
    pairs = np.array([(a, b) for a in range(-8, 8) for b in range(-8, 8)], np.int8).reshape(1, -1)
    for v in (pairs, rng.integers(-8, 8, (5, 3, 64)).astype(np.int8), rng.integers(-8, 8, (7, 34)).astype(np.int32)):
        expect = _pack_int4_formula(v)
        for arg in (v, jnp.asarray(v)):
            p = np.asarray(pk.pack_int4(arg))
            assert p.dtype == np.uint8 and p.shape == expect.shape
            np.testing.assert_array_equal(p, expect)
        u = np.asarray(pk.unpack_int4(jnp.asarray(expect)))
        assert u.dtype == np.int8
        np.testing.assert_array_equal(u, v.astype(np.int8))
    every_byte = np.arange(256, dtype=np.uint8).reshape(4, 64)
    for stored in (every_byte, every_byte.view(np.int8)):  # uint8 storage or its int8 bit pattern
        np.testing.assert_array_equal(np.asarray(pk.unpack_int4(jnp.asarray(stored))),
                                      _unpack_int4_formula(every_byte))


@pytest.mark.parametrize(
    "backend,group,m", [("triton", None, 130), ("triton", 64, 7), ("xla", None, 7),
                        ("xla", 64, 130)])
def test_w4a8_matches_reference(backend, group, m):
    x, w4, ws, bias = _case(100 + m, m, lo=-8, hi=7)
    if group is not None:
        ws = rand_scale(7, (N, K // group))
    p = pk.pack_int4(w4)
    y = pk.w4a8_linear(x, p, ws, bias, group_size=group, backend=backend)
    ref = pk.w4a8_linear_ref(x, p, ws, bias)
    assert y.shape == (m, N) and y.dtype == jnp.bfloat16
    assert_bf16_close(y, ref)
    np.testing.assert_array_equal(np.asarray(y[m // 2]), np.asarray(bias.astype(y.dtype)))


def test_w4a8_group_reference_equals_per_channel_when_scales_constant():
    x, w4, ws, bias = _case(9, 33, lo=-8, hi=7)
    p = pk.pack_int4(w4)
    wsg = jnp.repeat(ws[:, None], K // 64, axis=1)
    assert_bf16_close(pk.w4a8_linear_ref(x, p, wsg, bias), pk.w4a8_linear_ref(x, p, ws, bias))


def test_w4a8_bad_group_raises():
    x, w4, ws, bias = _case(9, 4, lo=-8, hi=7)
    with pytest.raises(ValueError):
        pk.w4a8_linear(x, pk.pack_int4(w4), rand_scale(1, (N, 4)), group_size=32)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 50))
def test_w8a8_hypothesis_triton_interpret(seed, m):
    x, wq, ws, bias = _case(seed % 100000, m, k=128, n=64)
    assert_bf16_close(pk.w8a8_linear(x, wq, ws, bias, backend="triton"),
                      pk.w8a8_linear_ref(x, wq, ws, bias))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("backend", ["mosaic", "triton"])
@pytest.mark.parametrize("m", [1, 7, 240, 600, 8192])
@pytest.mark.parametrize("k,n", [(1152, 3456), (4608, 1152)])
def test_linears_gpu(backend, m, k, n):
    x, wq, ws, bias = _case(m, m, k, n)
    assert_bf16_close(pk.w8a8_linear(x, wq, ws, bias, backend=backend),
                      pk.w8a8_linear_ref(x, wq, ws, bias))
    x, w4, ws, bias = _case(m + 7, m, k, n, lo=-8, hi=7)
    p = pk.pack_int4(w4)
    assert_bf16_close(pk.w4a8_linear(x, p, ws, bias, backend=backend),
                      pk.w4a8_linear_ref(x, p, ws, bias))


@pytest.mark.parametrize("op", ["w8a8_linear", "w4a8_linear"])
def test_rotation_inside_the_linear_equals_rotating_first(op):
    """``rotation=(h_base, signs)``: the linear's int8 input is the rotated row quantized per token
    (one fused pass on GPU), i.e. the linear of the rotated x; fresh random inputs, K = 36 · 4."""
    import pallas_kernels as pk
    from pallas_kernels.ops.rotate_quantize import rotate_ref

    k, n, m = 144, 48, 37
    rng = np.random.default_rng(3)
    base = np.where(rng.random((36, 36)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs = jnp.asarray(np.where(rng.random(k) < 0.5, -1.0, 1.0), jnp.float32)
    x = jnp.asarray(rng.standard_normal((m, k)) * (1 + 5 * (rng.random(k) < 0.05)), jnp.bfloat16)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(n), jnp.float32)
    if op == "w8a8_linear":
        w = jnp.asarray(rng.integers(-127, 128, (n, k)), jnp.int8)
    else:
        w = pk.pack_int4(jnp.asarray(rng.integers(-8, 8, (n, k)), jnp.int8))
    y = getattr(pk, op)(x, w, ws, bias, rotation=(base, signs), out_dtype=jnp.float32)
    ref = getattr(pk, f"{op}_ref")(rotate_ref(x, base, signs), w, ws, bias, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("op", ["w8a8_linear", "w4a8_linear"])
def test_rank1_branch_in_the_linear(op):
    """``rank1=(alpha, beta, u_scale)`` (Q-VDiT's TQE branch): ``u = u_scale · (x̂ · alpha)`` from the
    quantizer, ``u ⊗ beta`` in the GEMM epilogue with zero points, GELU and the gated residual = the formula
    on the reference's own codes (W4A8: its Triton kernel in interpret mode; W8A8's GEMM kernels are checked in
    ``test_int8_matmul``); the rotated input's branch reads the rotated codes; column splits share one ``u``
    and split ``beta``."""
    from pallas_kernels.ops.rotate_quantize import rotate_ref

    m = 32
    x, wq, ws, bias = _case(90, m, lo=-128, hi=127)
    if op == "w8a8_linear":
        w, z = wq, rand_int(91, (N,), -127, 127).astype(jnp.int32)
    else:
        w, z = pk.pack_int4(rand_int(91, (N, K), -8, 7)), rand_int(92, (N,), -7, 8).astype(jnp.int32)
    alpha = jax.random.normal(jax.random.key(93), (K,)) * 0.05
    beta = jax.random.normal(jax.random.key(94), (N,))
    u_scale = jax.random.uniform(jax.random.key(95), (m,), minval=0.5, maxval=2.0)
    extras = dict(residual=rand_x(96, m, N), gate=jax.random.normal(jax.random.key(97), (2, N)),
                  activation="gelu_tanh", w_zero_point=z, out_dtype=jnp.float32)
    fn, ref_fn = getattr(pk, op), getattr(pk, f"{op}_ref")
    y = fn(x, w, ws * 10, bias, backend="xla" if op == "w8a8_linear" else "triton", rank1=(alpha, beta, u_scale),
           **extras)
    ref = ref_fn(x, w, ws * 10, bias, rank1=(alpha, beta, u_scale), **extras)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-5 * float(jnp.abs(ref).max()))
    lin = ref_fn(x, w, ws * 10, bias, w_zero_point=z, out_dtype=jnp.float32)
    q, s = pk.quantize_per_token_ref(x)
    u = u_scale[:, None] * s * (q.astype(jnp.float32) @ alpha)[:, None]
    want = extras["residual"] + jnp.repeat(extras["gate"], m // 2, 0) * jax.nn.gelu(lin + u * beta, approximate=True)
    np.testing.assert_allclose(np.asarray(ref), np.asarray(want), rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    if op == "w4a8_linear":
        return
    rng = np.random.default_rng(4)  # rotated (K = 36 · 4): u from the rotated row's codes
    k_r = 144
    base = np.where(rng.random((36, 36)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs = jnp.asarray(np.where(rng.random(k_r) < 0.5, -1.0, 1.0), jnp.float32)
    xr, wr = rand_x(98, m, k_r), rand_int(99, (N, k_r), -127, 127)
    r1 = (alpha[:k_r], beta)
    yr = fn(xr, wr, ws, bias, rotation=(base, signs), rank1=r1, out_dtype=jnp.float32)
    refr = ref_fn(rotate_ref(xr, base, signs), wr, ws, bias, rank1=r1, out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(yr), np.asarray(refr), rtol=1e-5, atol=1e-5 * float(jnp.abs(refr).max()))
    parts = fn(x, w, ws, bias, backend="xla", splits=2, rank1=(alpha, beta), out_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(parts, -1)),
                               np.asarray(ref_fn(x, w, ws, bias, rank1=(alpha, beta), out_dtype=jnp.float32)),
                               rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match=r"rank1 alpha must be \(256,\)"):
        fn(x, w, ws, bias, rank1=(alpha[:-1], beta))


@pytest.mark.parametrize("op,rotate", [("w8a8_linear", True), ("w8a8_linear", False), ("w4a8_linear", True)])
def test_producer_inside_the_linear_equals_producing_first(op, rotate):
    """``smooth=`` / ``prenorm=(shift, scale, eps)``: the linear of the pre-LayerNorm stream equals the linear
    of the producer's bf16 output ``((LN(x) · (1 + scale[g]) + shift[g]) · smooth)`` (fused into the rotating
    quantizer on a GPU; an XLA pass here), per row group; ``smooth`` alone the same way."""
    from pallas_kernels.ops.producer.reference import layernorm_noaffine

    k, n, m, g = 144, 48, 12, 2
    rng = np.random.default_rng(5)
    base = np.where(rng.random((36, 36)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs = jnp.asarray(np.where(rng.random(k) < 0.5, -1.0, 1.0), jnp.float32)
    x = jnp.asarray(rng.standard_normal((m, k)) * 2 + 0.5, jnp.bfloat16)
    shift, scale = (jnp.asarray(rng.standard_normal((g, k)) * 0.3, jnp.float32) for _ in range(2))
    smooth = jnp.asarray(rng.uniform(0.3, 3.0, k), jnp.float32)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32)
    if op == "w8a8_linear":
        w = jnp.asarray(rng.integers(-127, 128, (n, k)), jnp.int8)
    else:
        w = pk.pack_int4(jnp.asarray(rng.integers(-8, 8, (n, k)), jnp.int8))
    rot = {"rotation": (base, signs)} if rotate else {}
    fn = getattr(pk, op)
    y = fn(x, w, ws, None, prenorm=(shift, scale, 1e-6), smooth=smooth, out_dtype=jnp.float32, **rot)
    a, c = (1 + scale) * smooth, shift * smooth
    h = (layernorm_noaffine(x).reshape(g, -1, k) * a[:, None] + c[:, None]).reshape(m, k).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fn(h, w, ws, None, out_dtype=jnp.float32, **rot)))
    y = fn(x, w, ws, None, smooth=smooth, out_dtype=jnp.float32, **rot)
    h = (x.astype(jnp.float32) * smooth.astype(jnp.bfloat16).astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fn(h, w, ws, None, out_dtype=jnp.float32, **rot)))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("k,n", [(1152, 3456), (4608, 1152)])
def test_fused_producer_in_the_linear_gpu(k, n):
    """The Hopper path (rotating quantizer with the LayerNorm prologue, Mosaic GEMM with zero points) against
    the XLA path of the same linear."""
    from vidq_jax.quant.hadamard import base_hadamard, hadamard_factors

    m, g = 8192, 2
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((m, k)) * 2 + 0.5, jnp.bfloat16)
    shift, scale = (jnp.asarray(rng.standard_normal((g, k)) * 0.3, jnp.float32) for _ in range(2))
    smooth = jnp.asarray(rng.uniform(0.3, 3.0, k), jnp.float32)
    signs = jnp.asarray(np.where(rng.random(k) < 0.5, -1.0, 1.0), jnp.float32)
    w = jnp.asarray(rng.integers(-127, 128, (n, k)), jnp.int8)
    ws = jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32)
    zp = jnp.asarray(rng.integers(-3, 4, n), jnp.int32)
    kw = dict(rotation=(base_hadamard(hadamard_factors(k)[0]), signs), w_zero_point=zp, smooth=smooth)
    for pn in (None, (shift, scale, 1e-6)):
        assert_bf16_close(pk.w8a8_linear(x, w, ws, None, backend="mosaic", prenorm=pn, **kw),
                          pk.w8a8_linear(x, w, ws, None, backend="xla", prenorm=pn, **kw))

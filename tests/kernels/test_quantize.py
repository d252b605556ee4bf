"""Per-token quantization: reference semantics and the Pallas-Triton kernel (interpret on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pallas_kernels as pk
from pallas_kernels.ops.quantize import QuantizeTiling, triton_quantize_per_token
from pallas_kernels.testing import rand_x, requires_gpu


def test_reference_semantics_and_zero_rows():
    x = rand_x(1, 9, 64, jnp.float32, zero_row=4)
    q, s = pk.quantize_per_token_ref(x)
    assert q.dtype == jnp.int8 and s.dtype == jnp.float32 and s.shape == (9, 1)
    assert float(s[4, 0]) == 1.0 and not np.any(np.asarray(q[4]))
    xn = np.asarray(x)
    np.testing.assert_allclose(np.asarray(s[:, 0])[[0, 1]], np.abs(xn).max(1)[[0, 1]] / 127,
                               rtol=1e-6)
    # The absmax element of each nonzero row maps to +-127; all values in [-127, 127].
    assert np.all(np.abs(np.asarray(q)).max(1)[[0, 1, 2, 3, 5]] == 127)
    assert np.asarray(q).min() >= -127
    deq = pk.dequantize_per_token_ref(q, s)
    assert np.all(np.abs(np.asarray(deq) - xn) <= np.asarray(s) / 2 + 1e-6)
    assert np.all(np.isfinite(np.asarray(deq)))


def test_round_half_to_even():
    x = jnp.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]], jnp.float32)  # scale = 1
    q, s = pk.quantize_per_token_ref(x)
    assert float(s[0, 0]) == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2]]


@pytest.mark.parametrize("m,k", [(1, 128), (7, 1152), (130, 256), (240, 64)])
def test_triton_kernel_interpret_matches_reference(m, k):
    x = rand_x(m + k, m, k, zero_row=m // 2)
    q, s, rs = pk.quantize_per_token(x, backend="triton", row_sum=True)
    qr, sr, rsr = pk.quantize_per_token_ref(x, row_sum=True)
    assert q.shape == (m, k) and s.shape == (m, 1) and rs.shape == (m, 1) and rs.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(sr))
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(rsr))  # the code sums, exactly
    np.testing.assert_array_equal(np.asarray(rsr), np.asarray(qr, np.int32).sum(-1, keepdims=True))


def test_looped_kernel_row_sums():
    """The fori_loop variant (``unroll=False``) reduces the code sums across its K chunks."""
    x = rand_x(5, 9, 256, zero_row=2)
    q, s, rs = triton_quantize_per_token(x, cfg=QuantizeTiling(unroll=False, chunk=64), interpret=True,
                                         row_sum=True)
    qr, sr, rsr = pk.quantize_per_token_ref(x, row_sum=True)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    np.testing.assert_array_equal(np.asarray(rs), np.asarray(rsr))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 40), kexp=st.integers(4, 8))
def test_quantize_hypothesis(seed, m, kexp):
    k = 2**kexp
    x = rand_x(seed, m, k, jnp.float32)
    q, s = pk.quantize_per_token(x)
    qr, sr = pk.quantize_per_token_ref(x)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    assert np.all(np.abs(np.asarray(q, np.float32) * np.asarray(s) - np.asarray(x))
                  <= np.asarray(s) / 2 + 1e-6)


def test_leading_dims_are_kept():
    x = rand_x(3, 6, 32).reshape(2, 3, 32)
    q, s = pk.quantize_per_token(x, backend="triton")
    assert q.shape == (2, 3, 32) and s.shape == (2, 3, 1)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("m,k", [(7, 1152), (2048, 4608)])
def test_triton_quantize_gpu(m, k):
    x = rand_x(m, m, k, zero_row=3)
    q, s = triton_quantize_per_token(x)
    qr, sr = pk.quantize_per_token_ref(x)
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32) - qr.astype(jnp.int32)))) <= 1
    np.testing.assert_allclose(np.asarray(s), np.asarray(sr), rtol=1e-6)


@pytest.mark.parametrize("unroll,dtype", [(True, jnp.int8), (False, pk.FP8)], ids=["unrolled-int8", "looped-e4m3"])
def test_alpha_dot_product_of_the_codes(unroll, dtype):
    """``alpha=``: the kernel writes ``u = u_scale · scale · Σ_k q·alpha`` (the per-token scalar of a rank-1
    epilogue term) reduced from its own codes across K chunks; codes, scales and code sums unchanged."""
    m, k = 13, 384  # three 128-wide chunks
    x = rand_x(21, m, k, zero_row=4)
    alpha = jax.random.normal(jax.random.key(22), (k,)) * 0.1
    u_scale = jax.random.uniform(jax.random.key(23), (m,), minval=0.5, maxval=2.0)
    rs = dtype == jnp.int8
    out = triton_quantize_per_token(x, cfg=QuantizeTiling(unroll=unroll, chunk=128), interpret=True, dtype=dtype,
                                    row_sum=rs, alpha=alpha, u_scale=u_scale)
    ref = pk.quantize_per_token_ref(x, dtype=dtype, row_sum=rs, alpha=alpha, u_scale=u_scale)
    assert len(out) == len(ref) == 3 + rs and out[-1].shape == (m, 1) and out[-1].dtype == jnp.float32
    for o, r in zip(out[:-1], ref[:-1]):  # codes, scales (and code sums) exactly as without alpha
        np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(r, np.float32))
    q, s = (np.asarray(a, np.float64) for a in ref[:2])
    exact = np.asarray(u_scale, np.float64)[:, None] * s * (q @ np.asarray(alpha, np.float64))[:, None]
    np.testing.assert_allclose(np.asarray(ref[-1]), exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[-1]), exact, rtol=1e-5, atol=1e-5)
    assert float(out[-1][4, 0]) == 0.0  # zero row: u = 0
    # the public dispatch keeps leading dims (u (..., 1)); u_scale=None is a plain dot product
    *_, u3 = pk.quantize_per_token(x.reshape(1, m, k), backend="triton", alpha=alpha, dtype=dtype)
    assert u3.shape == (1, m, 1)
    np.testing.assert_allclose(np.asarray(u3[0]), exact / np.asarray(u_scale, np.float64)[:, None], rtol=1e-5,
                               atol=1e-5)


def test_alpha_arguments_are_checked():
    x = rand_x(3, 4, 32, jnp.float32)
    with pytest.raises(ValueError, match=r"alpha must be \(K,\)"):
        pk.quantize_per_token_ref(x, alpha=jnp.ones((16,)))
    with pytest.raises(ValueError, match="pass alpha too"):
        pk.quantize_per_token_ref(x, u_scale=jnp.ones((4,)))
    with pytest.raises(ValueError, match="one value per token"):
        pk.quantize_per_token(x, backend="triton", alpha=jnp.ones((32,)), u_scale=jnp.ones((5,)))

"""Property tests of the uniform quantizers and the int4 packing layout (CPU, fast)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pallas_kernels import pack_int4, unpack_int4
from vidq_jax.quant import QuantSpec, compute_qparams, dequantize, fake_quant, quantize, quantize_with_params

SHAPES = [(3, 8)]  # one shape: every new shape costs eager-op compiles (leading dims tested below)
_BIG = float(np.float32(1e30))
FINITE = st.floats(-_BIG, _BIG, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def tensors_and_specs(draw, elements=FINITE):
    shape = draw(st.sampled_from(SHAPES))
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    gran = draw(st.sampled_from(["tensor", "channel", "token", "group"]))
    group = 4 if gran == "group" else None
    spec = QuantSpec(draw(st.integers(2, 8)), draw(st.booleans()), gran, group)
    return x, spec


def _scale_per_element(q, spec):
    """Broadcast the (canonical) scale back to the element grid."""
    return np.asarray(dequantize(jnp.ones_like(q.values), q.scale, None, spec))


@settings(max_examples=100, deadline=None)
@given(tensors_and_specs())
def test_error_bound_and_range(case):
    x, spec = case
    q = quantize(x, spec)
    v = np.asarray(q.values)
    assert v.dtype == np.int8
    assert v.min() >= spec.qmin and v.max() <= spec.qmax
    s = _scale_per_element(q, spec)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    xh = np.asarray(dequantize(q.values, q.scale, q.zero_point, spec))
    assert np.all(np.isfinite(xh))
    err = np.abs(x.astype(np.float64) - xh.astype(np.float64))
    assert np.all(err <= s * (0.5 + 1e-4)), float(np.max(err / s))


@settings(max_examples=100, deadline=None)
@given(tensors_and_specs())
def test_fake_quant_idempotent(case):
    x, spec = case
    y1 = np.asarray(fake_quant(x, spec))
    y2 = np.asarray(fake_quant(y1, spec))
    assert y1.dtype == x.dtype
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(SHAPES),
    st.integers(2, 8),
    st.booleans(),
    st.sampled_from(["tensor", "channel", "group"]),
    st.floats(-_BIG, _BIG, width=32),
)
def test_zero_and_constant_rows_columns_finite(shape, bits, sym, gran, c):
    spec = QuantSpec(bits, sym, gran, 4 if gran == "group" else None)
    x = np.zeros(shape, np.float32)
    x[..., 0, :] = 0.0  # zero row
    if shape[-2] > 1:
        x[..., 1:, 0] = np.float32(c)  # constant column
    for arr in (x, np.zeros(shape, np.float32), np.full(shape, np.float32(c))):
        q = quantize(arr, spec)
        xh = np.asarray(dequantize(q.values, q.scale, q.zero_point, spec))
        assert np.all(np.isfinite(np.asarray(q.scale)))
        assert np.all(np.isfinite(xh))
        assert np.all(xh[arr == 0] == 0), "zeros must dequantize exactly"


def test_extreme_and_tiny_values_finite():
    x = np.array([[1e30, -1e30, 1e-30, 0.0], [1e-38, -1e-38, 0.0, 0.0], [3e-45, 0.0, 0.0, 0.0]], np.float32)
    for bits in (2, 4, 8):
        for sym in (True, False):
            for gran in ("tensor", "channel"):
                y = np.asarray(fake_quant(x, QuantSpec(bits, sym, gran)))
                assert np.all(np.isfinite(y))
                assert abs(y[0, 0] - 1e30) <= 1e30 / (2 ** (bits - 1) - 1)


def test_symmetric_formula_and_shapes():
    x = np.array([[0.5, -1.0, 0.25, 0.0], [2.0, 1.0, -0.5, 0.1]], np.float32)
    q = quantize(x, QuantSpec(8, True, "channel"))
    np.testing.assert_allclose(q.scale, [1.0 / 127, 2.0 / 127], rtol=1e-7)
    assert q.zero_point is None
    np.testing.assert_array_equal(q.values[0], np.round(x[0] * 127).astype(np.int8))
    g = quantize(np.ones((3, 5, 8), np.float32), QuantSpec(4, False, "group", 4))
    assert g.scale.shape == (3, 5, 2) and g.zero_point.shape == (3, 5, 2)
    assert quantize(x, QuantSpec(8, True, "tensor")).scale.shape == ()
    assert quantize(x, QuantSpec(8, True, "token")).scale.shape == (2,)


def test_asymmetric_formula():
    # xmin=-1, xmax=2, 2 bits: scale = 3/3 = 1, zp = round(-1) + 2 = 1, grid = {-1, 0, 1, 2}
    x = np.array([[-1.0, 0.0, 0.4, 2.0]], np.float32)
    spec = QuantSpec(2, False, "channel")
    q = quantize(x, spec)
    np.testing.assert_allclose(q.scale, [1.0])
    np.testing.assert_array_equal(q.zero_point, [1])
    np.testing.assert_array_equal(q.values, [[-2, -1, -1, 1]])
    np.testing.assert_allclose(dequantize(*q, spec), [[-1.0, 0.0, 0.0, 2.0]])


def test_static_params_saturate():
    spec = QuantSpec(8, True, "tensor")
    x = np.array([[-10.0, -1.0, 0.5, 10.0]], np.float32)
    v = np.asarray(quantize_with_params(x, jnp.float32(1.0 / 127), None, spec))
    np.testing.assert_array_equal(v, [[-127, -127, 64, 127]])  # 63.5 rounds half-to-even -> 64


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        quantize(np.ones((2, 6), np.float32), QuantSpec(8, True, "group", 4))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bits=1),
        dict(bits=9),
        dict(bits=True),
        dict(bits=4.0),
        dict(bits=8, granularity="row"),
        dict(bits=8, granularity="group"),
        dict(bits=8, granularity="group", group_size=0),
        dict(bits=8, granularity="channel", group_size=4),
    ],
)
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)


def test_matches_kernel_per_token_contract():
    ref = pytest.importorskip("pallas_kernels")
    if not hasattr(ref, "quantize_per_token_ref"):
        pytest.skip("pallas_kernels.quantize_per_token_ref not available")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64)).astype(np.float32) * rng.uniform(0.01, 10, (16, 1)).astype(np.float32)
    x[3] = 0.0
    qv, qs = ref.quantize_per_token_ref(jnp.asarray(x))
    q = quantize(x, QuantSpec(8, True, "token"))
    np.testing.assert_array_equal(np.asarray(q.values), np.asarray(qv))
    np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(qs).reshape(-1))


# ---------------------------------------------------------------------------- int4 packing


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int8, (3, 8), elements=st.integers(-8, 7)))
def test_int4_pack_roundtrip_and_layout(v):
    p = np.asarray(pack_int4(v))
    assert p.dtype == np.uint8 and p.shape == (v.shape[0], v.shape[1] // 2)
    expect = (v[:, 0::2].astype(np.int32) & 0xF) | ((v[:, 1::2].astype(np.int32) & 0xF) << 4)
    np.testing.assert_array_equal(p, expect.astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(unpack_int4(p)), v)


def test_int4_layout_example_and_odd_k():
    v = np.array([[-8, 7, 1, -1]], np.int8)
    np.testing.assert_array_equal(np.asarray(pack_int4(v)), [[0x78, 0xF1]])
    with pytest.raises(ValueError, match="even"):
        pack_int4(np.zeros((2, 3), np.int8))


def test_int4_matches_kernel_package_if_present():
    pk = pytest.importorskip("pallas_kernels")
    if not hasattr(pk, "pack_int4"):
        pytest.skip("pallas_kernels.pack_int4 not available yet")
    v = np.random.default_rng(1).integers(-8, 8, (4, 32)).astype(np.int8)
    np.testing.assert_array_equal(np.asarray(pk.pack_int4(jnp.asarray(v))), np.asarray(pack_int4(v)))
    np.testing.assert_array_equal(np.asarray(pk.unpack_int4(pack_int4(v))), v)


def test_activation_fake_quant_helpers():
    from vidq_jax.quant import fake_quant_per_group, fake_quant_per_token

    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(fake_quant_per_token(x), fake_quant(x, QuantSpec(8, True, "token")))
    np.testing.assert_array_equal(fake_quant_per_group(x, 4), fake_quant(x, QuantSpec(8, False, "group", 4)))
    assert np.abs(np.asarray(fake_quant_per_token(x)) - x).max() <= np.abs(x).max() / 127 / 2 * 1.0001

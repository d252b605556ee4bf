"""Channel balancing math (vidq_jax.quant.balance): the SmoothQuant scale and its inverse on the weight
side, ViDiT-Q's multiplier convention, zero guards, incoherence, per-layer keys and balance_for_layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant import LayerQuant, incoherence, smooth_scale, viditq_multiplier
from vidq_jax.quant.balance import (
    SMOOTH_MAX,
    balance_for_layer,
    channel_absmax,
    layer_key,
    weight_channel_absmax,
)


def test_smooth_scale_formula_and_viditq_convention():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 50, 16).astype(np.float32)
    w = rng.uniform(0.01, 1, 16).astype(np.float32)
    for alpha in (0.0, 0.25, 0.5, 0.99):
        s = np.asarray(smooth_scale(a, w, alpha))
        np.testing.assert_allclose(s, a**alpha / w ** (1 - alpha), rtol=1e-5)
        m = np.asarray(viditq_multiplier(w, a, 1 - alpha))
        np.testing.assert_allclose(m, w ** (1 - alpha) / a**alpha, rtol=1e-5)
        np.testing.assert_allclose(m * s, 1.0, rtol=1e-5)


def test_smoothing_is_undone_on_the_weight_side():
    """x/s with W·diag(s) (SmoothQuant) = x·m with W/m (ViDiT-Q, m = 1/s) = x·W; α balances the maxima."""
    rng = np.random.default_rng(1)
    k, n = 24, 8
    x = rng.standard_normal((32, k)).astype(np.float32) * rng.uniform(0.1, 30, k).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    a_max, w_max = channel_absmax(x), weight_channel_absmax(w)
    np.testing.assert_allclose(a_max, np.abs(x).max(0), rtol=1e-6)
    np.testing.assert_allclose(w_max, np.abs(w).max(1), rtol=1e-6)
    for alpha in (0.25, 0.5):
        s = np.asarray(smooth_scale(a_max, w_max, alpha))
        y = x @ w
        np.testing.assert_allclose((x / s) @ (w * s[:, None]), y, rtol=1e-4, atol=1e-4)
        m = np.asarray(viditq_multiplier(w_max, a_max, 1 - alpha))
        np.testing.assert_allclose((x * m) @ (w / m[:, None]), y, rtol=1e-4, atol=1e-4)
        # after smoothing: max|x'_c| = A_c^(1-α) Wmax_c^(1-α), max|W'_c| = A_c^α Wmax_c^α
        np.testing.assert_allclose(np.abs(x / s).max(0), (np.asarray(a_max) * np.asarray(w_max)) ** (1 - alpha),
                                   rtol=1e-4)
    # α = 0.5 equalises the activation and weight channel maxima
    s = np.asarray(smooth_scale(a_max, w_max, 0.5))
    np.testing.assert_allclose(np.abs(x / s).max(0), np.abs(w * s[:, None]).max(1), rtol=1e-4)


def test_smooth_scale_guards_zeros():
    a = jnp.array([0.0, 1.0, 0.0, 2.0, jnp.inf])
    w = jnp.array([1.0, 0.0, 0.0, 1e-30, 1.0])
    s = np.asarray(smooth_scale(a, w, 0.5))
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    np.testing.assert_array_equal(s[[0, 1, 2, 4]], 1.0)
    assert s[3] == pytest.approx(SMOOTH_MAX)  # clipped


def test_incoherence():
    x = np.zeros((4, 8), np.float32)
    x[0] = 1.0
    x[1, 3] = -5.0
    x[3] = np.arange(8)
    inc = np.asarray(incoherence(x))
    np.testing.assert_allclose(inc, [1.0, 8.0, 1.0, 7.0 / 3.5])
    assert incoherence(np.ones((2, 3, 5))).shape == (2, 3)  # per token over the last axis


def test_layer_key_is_deterministic_per_seed_and_path():
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    np.testing.assert_array_equal(data(layer_key(0, "blocks_0/attn/qkv")), data(layer_key(0, "blocks_0/attn/qkv")))
    assert not np.array_equal(data(layer_key(0, "blocks_0/attn/qkv")), data(layer_key(0, "blocks_1/attn/qkv")))
    assert not np.array_equal(data(layer_key(0, "blocks_0/attn/qkv")), data(layer_key(1, "blocks_0/attn/qkv")))


def test_balance_for_layer():
    kernel = jnp.ones((72, 8))
    sm, sg = balance_for_layer(kernel, LayerQuant(smooth_alpha=0.5, rotate=True), jnp.full((72,), 4.0),
                               key=layer_key(0, "blocks_0/attn/qkv"), where="blocks_0/attn/qkv")
    np.testing.assert_allclose(sm, 2.0, rtol=1e-6)
    assert sg.shape == (72,)
    sg2 = balance_for_layer(kernel, LayerQuant(rotate=True), key=layer_key(0, "blocks_0/attn/qkv"))[1]
    np.testing.assert_array_equal(sg, sg2)  # deterministic per (seed, path)
    assert balance_for_layer(kernel, LayerQuant()) == (None, None)
    with pytest.raises(ValueError, match="calibration statistics"):
        balance_for_layer(kernel, LayerQuant(smooth_alpha=0.5), None, where="blocks_0/attn/qkv")
    with pytest.raises(ValueError, match=r"act_absmax shape"):
        balance_for_layer(kernel, LayerQuant(smooth_alpha=0.5), jnp.ones((8,)), where="blocks_0/attn/qkv")
    with pytest.raises(ValueError, match="PRNG key"):
        balance_for_layer(kernel, LayerQuant(rotate=True))

"""Fused producer (LayerNorm no-affine + adaLN modulate + smoothing + hook + quantize)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from pallas_kernels.ops.producer import layernorm_noaffine, producer_prequant_ref


def _sign_flip(y, signs):
    return y * signs


def test_producer_matches_manual_composition():
    ks = jax.random.split(jax.random.key(0), 5)
    b, l, k = 2, 12, 64
    x = jax.random.normal(ks[0], (b, l, k), jnp.bfloat16) * 4 + 1
    shift = jax.random.normal(ks[1], (b, 1, k)) * 0.1
    scale = jax.random.normal(ks[2], (b, 1, k)) * 0.1
    smooth = jax.random.uniform(ks[3], (k,), minval=0.5, maxval=2.0)
    signs = jnp.where(jax.random.bernoulli(ks[4], 0.5, (k,)), 1.0, -1.0)
    hook = jax.tree_util.Partial(_sign_flip, signs=signs)
    q, s = pk.fused_quantize_producer_ref(x, shift, scale, smooth, hook)
    xf = np.asarray(x, np.float64)
    mu = xf.mean(-1, keepdims=True)
    var = xf.var(-1, keepdims=True)
    y = (xf - mu) / np.sqrt(var + 1e-6)
    y = (y * (1 + np.asarray(scale)) + np.asarray(shift)) * np.asarray(smooth) * np.asarray(signs)
    s_np = np.abs(y).max(-1, keepdims=True) / 127
    np.testing.assert_allclose(np.asarray(s), s_np, rtol=1e-4)
    assert q.shape == (b, l, k) and s.shape == (b, l, 1)
    assert np.max(np.abs(np.asarray(q, np.float64) - np.round(y / s_np))) <= 1


def test_jitted_producer_equals_reference_and_handles_constant_rows():
    x = jax.random.normal(jax.random.key(1), (2, 8, 32), jnp.float32)
    x = x.at[0, 3].set(5.0)  # constant row: LayerNorm gives zeros -> scale 1, q 0 (no NaN)
    q, s = pk.fused_quantize_producer(x)
    qr, sr = pk.fused_quantize_producer_ref(x)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(qr))
    assert float(s[0, 3, 0]) == 1.0 and not np.any(np.asarray(q[0, 3]))
    assert np.all(np.isfinite(np.asarray(s)))


def test_layernorm_noaffine_and_prequant_identity():
    x = jax.random.normal(jax.random.key(2), (3, 16), jnp.float32) * 3 + 2
    y = layernorm_noaffine(x)
    np.testing.assert_allclose(np.asarray(y.mean(-1)), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y.std(-1)), 1, atol=1e-3)
    np.testing.assert_allclose(np.asarray(producer_prequant_ref(x)), np.asarray(y))


def test_triton_producer_interpret_matches_reference():
    ks = jax.random.split(jax.random.key(3), 4)
    b, l, k = 2, 13, 128  # L not a multiple of the row block: exercises the padded tail
    x = jax.random.normal(ks[0], (b, l, k), jnp.bfloat16) * 3 + 1
    x = x.at[1, 5].set(0)  # zero row -> LayerNorm zeros -> scale 1, q 0
    shift = jax.random.normal(ks[1], (b, 1, k)) * 0.1
    scale = jax.random.normal(ks[2], (b, 1, k)) * 0.1
    smooth = jax.random.uniform(ks[3], (k,), minval=0.5, maxval=2.0)
    q, s = pk.fused_quantize_producer(x, shift, scale, smooth, backend="triton")
    qr, sr = pk.fused_quantize_producer_ref(x, shift, scale, smooth)
    assert q.shape == (b, l, k) and s.shape == (b, l, 1)
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32) - qr.astype(jnp.int32)))) <= 1
    np.testing.assert_allclose(np.asarray(s), np.asarray(sr), rtol=1e-5)
    # shift=0 path: (B, K) modulation vectors are accepted too.
    q2, _ = pk.fused_quantize_producer(x, None, scale[:, 0], None, backend="triton")
    q2r, _ = pk.fused_quantize_producer_ref(x, None, scale, None)
    assert int(jnp.max(jnp.abs(q2.astype(jnp.int32) - q2r.astype(jnp.int32)))) <= 1

"""GPTQ (vidq_jax.quant.methods.gptq): the column loop against a plain NumPy transcription of the algorithm,
the Hessian in the balanced basis, and the point of it all — lower layer-output error than round-to-nearest."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant import LayerQuant, balance_for_layer, hadamard_matrix
from vidq_jax.quant.methods import WEIGHT_METHODS, gptq, rtn
from vidq_jax.quant.stats import Hessian, LayerStats

K, N = 128, 48
GROUPED = LayerQuant(w_bits=4, w_granularity="group", w_group_size=32, a_bits=None)
CHANNEL = LayerQuant(w_bits=4, a_bits=None)


def _inputs(seed: int, m: int = 1024) -> np.ndarray:
    """Correlated layer inputs with unequal channel scales (what GPTQ's error feedback exploits)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((K, K)) * 0.4 + np.eye(K) * 2
    scale = np.exp(np.random.default_rng(98).standard_normal(K) * 0.5)
    return ((rng.standard_normal((m, K)) @ mix) * scale).astype(np.float32)


def _stats(x: np.ndarray) -> LayerStats:
    return LayerStats(np.abs(x).max(0), 0.0, 0.0, 0.0, 0.0, 0.0, len(x), 1,
                      extra={"hessian": Hessian(x.T.astype(np.float64) @ x, len(x))})


@pytest.fixture(scope="module")
def layer_data():
    x = _inputs(0)
    w = (np.random.default_rng(1).standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    return x, w, _stats(x)


def _reference_gptq(w: np.ndarray, h: np.ndarray, bits: int, symmetric: bool, group: int) -> np.ndarray:
    """Unblocked GPTQ, column by column in float64 (group parameters from the updated weights)."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64) + 0.01 * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    levels, qmax = 2**bits, 2 ** (bits - 1) - 1
    qmin = -qmax if symmetric else -(2 ** (bits - 1))
    q = np.zeros_like(w)
    for j in range(w.shape[1]):
        if j % group == 0:
            blk = w[:, j:j + group]
            if symmetric:
                s, z = np.abs(blk).max(1) / qmax, np.zeros(len(w))
            else:
                hi, lo = np.maximum(blk.max(1), 0), np.minimum(blk.min(1), 0)
                s = hi / (levels - 1) - lo / (levels - 1)
                z = np.round(lo / s) + levels // 2
        q[:, j] = np.clip(np.round(w[:, j] / s) - z, qmin, qmax)
        err = (w[:, j] - (q[:, j] + z) * s) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
    return q


def test_column_loop_matches_plain_gptq(layer_data):
    x, w, stats = layer_data
    rec = gptq.quantize(jnp.asarray(w), GROUPED, stats=stats)
    ref = _reference_gptq(w.T, stats.extra["hessian"].xtx, 4, False, 32)
    assert np.mean(np.asarray(rec.int_weight()) == ref) > 0.995  # float32 vs float64: a rare rounding tie may flip


def test_block_size_aligns_groups():
    assert gptq.block_size(1152, 128) == 128 and gptq.block_size(4608, 288) == 288
    assert gptq.block_size(1152, 192) == 192 and gptq.block_size(1152, 32) == 128
    assert gptq.block_size(72, None) == 72 and gptq.block_size(384, 64) == 128


@pytest.mark.parametrize("lq", [CHANNEL, GROUPED], ids=["channel", "group"])
def test_gptq_beats_rtn_on_layer_output_and_is_deterministic(layer_data, lq):
    x, w, stats = layer_data
    held_out = _inputs(7)
    y = held_out @ w

    def err(rec) -> float:
        return float(np.mean((held_out @ np.asarray(rec.dequantize()).T - y) ** 2) / np.mean(y**2))

    a = gptq.quantize(jnp.asarray(w), lq, stats=stats)
    b = gptq.quantize(jnp.asarray(w), lq, stats=stats)
    np.testing.assert_array_equal(a.qvalue, b.qvalue)
    np.testing.assert_array_equal(a.scale, b.scale)
    r = rtn.quantize(jnp.asarray(w), lq)
    assert err(a) < 0.75 * err(r)
    assert a.qvalue.dtype == r.qvalue.dtype == jnp.uint8 and a.scale.shape == r.scale.shape  # the RTN layout


def test_hessian_in_the_balanced_basis(layer_data):
    """Smoothing and rotation are applied to W before GPTQ; the Hessian is the balanced input's."""
    x, w, stats = layer_data
    lq = CHANNEL.replace(smooth_alpha=0.5, rotate=True)
    smooth, signs = balance_for_layer(jnp.asarray(w), lq, jnp.asarray(stats.absmax), key=jax.random.PRNGKey(3))
    xb = (x / np.asarray(smooth, np.float64)) @ hadamard_matrix(K, np.asarray(signs))
    h = gptq.balanced_hessian(stats.extra["hessian"].xtx, smooth, signs)
    np.testing.assert_allclose(h, xb.T @ xb, rtol=1e-6, atol=1e-6 * np.abs(h).max())
    y = x @ w
    errs = {}
    for name in ("rtn", "gptq"):
        rec = WEIGHT_METHODS[name].quantize(jnp.asarray(w), lq, smooth=smooth, hadamard_signs=signs, stats=stats)
        errs[name] = float(np.mean((xb @ np.asarray(rec.dequantize(), np.float64).T - y) ** 2))
    assert errs["gptq"] < 0.75 * errs["rtn"]


def test_dead_inputs_and_missing_hessian(layer_data):
    x, w, _ = layer_data
    x = x.copy()
    x[:, :8] = 0.0  # inputs that never fire: their weight columns are zeroed, no NaN
    rec = gptq.quantize(jnp.asarray(w), CHANNEL, stats=_stats(x))
    deq = np.asarray(rec.dequantize())
    assert np.all(np.isfinite(deq)) and np.all(deq[:, :8] == 0)
    with pytest.raises(ValueError, match=r"layer 'blocks_0/mlp/fc1': w_method='gptq' needs the 'hessian'"):
        gptq.quantize(jnp.asarray(w), CHANNEL, stats=None, name="blocks_0/mlp/fc1")

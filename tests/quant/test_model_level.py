"""Model-level checks on a fixture model: balanced-but-unquantized equals the float model; one shared
(m, H) across the caption K/V projections; a rule naming no layer of the model is an error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from vidq_jax.quant import LayerQuant, LayerRule, QuantConfig, dense_paths, quantize_params
from vidq_jax.quant.balance import balance_for_layer, layer_key
from vidq_jax.quant.config import SHARED_CAPTION_KV
from vidq_jax.quant.record import QuantizedWeight, balanced_weight
from vidq_jax.quant.tree import get_kernel, set_kernel


@struct.dataclass
class BalancedFloat:
    """Smoothing + rotation applied exactly as the quantized record does, but no quantization."""

    rec: QuantizedWeight  # supplies balance() (x / s) · R
    w_balanced: jax.Array  # W' = (W · diag(s))ᵀ · R, float (N, K)

    def quantized_dense(self, x, bias=None, dtype=None):
        lead = x.shape[:-1]
        y = jnp.matmul(self.rec.balance(x.reshape(-1, x.shape[-1]).astype(jnp.float32)), self.w_balanced.T,
                       precision=jax.lax.Precision.HIGHEST)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, -1).astype(dtype or x.dtype)


@pytest.fixture(scope="module")
def pixart(pixart_batch):
    return pixart_batch


def test_balanced_unquantized_model_equals_float(pixart):
    model, params, batch = pixart
    lq = LayerQuant(smooth_alpha=0.5, rotate=True)
    rng = np.random.default_rng(0)
    balance = jax.jit(balance_for_layer, static_argnames=("layer", "where"))
    new = params
    for p in dense_paths(params):
        if not p.startswith("blocks_"):
            continue
        kernel = get_kernel(params, p)
        absmax = jnp.asarray(rng.uniform(0.01, 50.0, kernel.shape[0]), jnp.float32)  # strong smoothing
        smooth, signs = balance(kernel, lq, absmax, key=layer_key(0, p), where=p)
        rec = QuantizedWeight(jnp.zeros((kernel.shape[1], kernel.shape[0]), jnp.int8), jnp.ones((kernel.shape[1],)),
                              smooth=smooth, hadamard_signs=signs, layer=lq, in_features=kernel.shape[0])
        new = set_kernel(new, p, BalancedFloat(rec, jax.jit(balanced_weight)(kernel, smooth, signs)))
    apply = jax.jit(model.apply)
    y_fp = np.asarray(apply({"params": params}, **batch))
    y_bal = np.asarray(apply({"params": new}, **batch))
    assert np.abs(y_bal - y_fp).max() <= 2e-5 * np.abs(y_fp).max()


def test_shared_balance_for_caption_kv(pixart):
    model, params, batch = pixart
    base = QuantConfig.preset("viditq-w4a8", backend="xla")
    shared = base.replace(share_balance=(SHARED_CAPTION_KV,))
    q0, stats = quantize_params(params, [batch], model=model, config=base, return_stats=True)
    q1 = quantize_params(params, None, model=model, config=shared, stats=stats)
    k0, k1 = (q1[f"blocks_{i}"]["cross_attn"]["kv_linear"]["kernel"] for i in (0, 1))
    np.testing.assert_array_equal(k0.smooth, k1.smooth)  # one (m, H) for every block's K/V
    np.testing.assert_array_equal(k0.hadamard_signs, k1.hadamard_signs)
    u0, u1 = (q0[f"blocks_{i}"]["cross_attn"]["kv_linear"]["kernel"] for i in (0, 1))
    assert not np.array_equal(u0.hadamard_signs, u1.hadamard_signs)
    # other layers are untouched
    np.testing.assert_array_equal(q0["blocks_0"]["attn"]["qkv"]["kernel"].qvalue, q1["blocks_0"]["attn"]["qkv"]["kernel"].qvalue)
    apply = jax.jit(model.apply)
    y_fp = np.asarray(apply({"params": params}, **batch))
    y = np.asarray(apply({"params": q1}, **batch))
    assert np.abs(y - y_fp).max() < 0.2 * np.abs(y_fp).max()
    # grouping layers that read DIFFERENT tensors is flagged
    wrong = base.replace(share_balance=(r"mlp/fc1$",))
    with pytest.warns(UserWarning, match="different inputs"):
        quantize_params(params, None, model=model, config=wrong, stats=stats)


def test_config_round_trip_and_bad_input(pixart):
    model, params, _ = pixart
    for name in ("viditq-w4a8-mp", "naive-w8a8", "fp"):
        cfg = QuantConfig.preset(name).replace(share_balance=(SHARED_CAPTION_KV,))
        assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="w_bits"):
        QuantConfig.preset("viditq-w8a8").with_rules(LayerRule("mlp", w_bits=12))
    with pytest.raises(ValueError, match="a_group_size"):
        LayerQuant(a_granularity="group")
    cfg = QuantConfig.preset("dynamic-w8a8").with_rules(
        LayerRule("^blocks_7/mlp/", w_bits=4))
    with pytest.raises(ValueError, match=r"'\^blocks_7/mlp/'\] match no Dense layer of PixArt \(pixart\)"):
        quantize_params(params, None, model=model, config=cfg)

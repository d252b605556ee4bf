"""Q-DiT group quantization settings: ``LayerQuant.fitted`` (group sizes that do not divide C_in), the
``qdit-*`` presets, group rules of a plan (``BitsRule.group_size``), dynamic per-token-per-group activations,
and a qdit-quantized folder saved and loaded like the others."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.checkpoint import load_model, save_quantized
from vidq_jax.quant import LayerQuant, QuantConfig, compute_qparams, fake_quant_per_group, get_kernel, quantize_params
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.methods import rtn


def test_fitted_group_size():
    lq = QuantConfig.preset("qdit-w4a8").default
    assert (lq.w_group_size, lq.a_group_size, lq.a_symmetric, lq.w_symmetric) == (128, 128, False, False)
    assert lq.fitted(1152) is lq and lq.fitted(4608) is lq
    small = lq.fitted(192)  # the bundled STDiT3's hidden size
    assert (small.w_group_size, small.a_group_size) == (96, 96)
    assert lq.replace(fit_group_size=False).fitted(192).w_group_size == 128  # then check_in_features refuses it
    with pytest.raises(ValueError, match="w_group_size=128 does not divide C_in=192"):
        lq.replace(fit_group_size=False).check_in_features(192)
    six = QuantConfig.preset("qdit-w6a8")
    assert six.default.w_bits == 6 and not six.default.packed
    assert QuantConfig.from_dict(six.to_dict()) == six


def test_group_rule_of_a_plan():
    rule = BitsRule(r"^blocks_0/mlp/fc1$", 4, a_bits=8, group_size=64)
    assert dict(rule.layer_rule().settings) == {"w_bits": 4, "a_bits": 8, "w_granularity": "group",
                                                "w_group_size": 64, "a_granularity": "group", "a_group_size": 64}
    plan = MixedPrecisionPlan("p", 1, (0,), (rule,))
    assert MixedPrecisionPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="group_size=0 must be a positive integer"):
        BitsRule("x", 4, group_size=0)


def test_dynamic_per_token_per_group_activations():
    lq = QuantConfig.preset("qdit-w4a8", backend="xla").default.replace(w_group_size=32, a_group_size=32)
    rng = np.random.default_rng(0)
    rec = rtn.quantize(jnp.asarray(rng.standard_normal((64, 16)).astype(np.float32)), lq)

    @jax.jit
    def run(x):
        _, scale, zp = rec.quantize_activation(x)
        ref = jnp.matmul(fake_quant_per_group(x, 32, 8, symmetric=False), rec.dequantize().T,
                         precision=jax.lax.Precision.HIGHEST)
        return (scale, zp), compute_qparams(x, lq.act_spec()), rec.quantized_dense(x), ref, \
            rec.with_backend("simulate").quantized_dense(x)

    for seed in (1, 2):  # parameters come from every call's own input (per token, per group): nothing stored
        x = jnp.asarray(np.random.default_rng(seed).standard_normal((5, 64)).astype(np.float32) * seed)
        got, want, y_xla, ref, y_sim = run(x)
        assert got[0].shape == got[1].shape == (5, 2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(y_xla, ref, rtol=1e-5, atol=1e-5)  # int8 GEMM per group (xla)
        np.testing.assert_allclose(y_sim, ref, rtol=1e-5, atol=1e-5)


def test_qdit_preset_on_a_model_and_its_folder(pixart_batch, tmp_path):
    model, params, _ = pixart_batch
    cfg = QuantConfig.preset("qdit-w4a8")  # backend "auto": what a loaded folder runs with (xla here)
    plan = MixedPrecisionPlan("searched", 1, (0,), (BitsRule(r"^blocks_1/mlp/fc2$", 4, a_bits=8, group_size=64),))
    q = quantize_params(params, None, model=model, config=cfg, plan=plan)  # Q-DiT needs no calibration
    assert get_kernel(q, "blocks_0/attn/qkv").layer.w_group_size == 96  # C_in 96: 128 fitted
    assert get_kernel(q, "blocks_0/mlp/fc2").layer.a_group_size == 128  # C_in 384
    assert get_kernel(q, "blocks_1/mlp/fc2").layer.w_group_size == 64  # the plan's
    out = save_quantized(tmp_path / "q", model, q, arch="pixart-alpha", config=cfg, plan=plan, preset="qdit-w4a8")
    _, loaded, meta = load_model(out)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(q)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(q)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

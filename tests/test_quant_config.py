"""QuantConfig / LayerQuant validation, presets, rule resolution; balancing math."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant import (
    PRESETS,
    LayerQuant,
    LayerRule,
    QuantConfig,
    check_rules,
    incoherence,
    smooth_scale,
    viditq_multiplier,
)
from vidq_jax.quant.balance import balance_for_layer, layer_key

PIXART_LAYERS = (
    ["t_embedder/mlp_0", "t_embedder/mlp_2", "t_block/1", "y_embedder/y_proj/fc1", "y_embedder/y_proj/fc2",
     "csize_embedder/mlp_0", "ar_embedder/mlp_2", "final_layer/linear"]
    + [f"blocks_{i}/{s}" for i in range(28) for s in
       ("attn/qkv", "attn/proj", "cross_attn/q_linear", "cross_attn/kv_linear", "cross_attn/proj", "mlp/fc1", "mlp/fc2")]
)

REQUIRED_PRESETS = ["fp", "naive-w8a8", "dynamic-w8a8", "smoothquant-w8a8", "smoothquant-w4a8", "quarot-w8a8",
                    "quarot-w4a8", "viditq-w8a8", "viditq-w6a6", "viditq-w4a8", "viditq-w4a8-mp"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(w_bits=1), "w_bits"),
        (dict(w_bits=9), "w_bits"),
        (dict(a_bits=16), "a_bits"),
        (dict(w_bits=4.5), "w_bits"),
        (dict(w_granularity="token"), "w_granularity"),
        (dict(a_granularity="channel"), "a_granularity"),
        (dict(w_granularity="group"), "w_group_size"),
        (dict(w_group_size=64), "w_group_size"),
        (dict(w_granularity="group", w_group_size=0), "w_group_size"),
        (dict(w_granularity="group", w_group_size=64, a_granularity="group", a_group_size=128), "group sizes"),
        (dict(a_static=True), "a_static"),
        (dict(smooth_alpha=1.5), "smooth_alpha"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_layer_quant_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerQuant(**kwargs)


def test_group_size_must_divide_c_in_at_config_resolution():
    lq = LayerQuant(w_granularity="group", w_group_size=128)
    lq.check_in_features(1152, "blocks_0/attn/qkv")
    with pytest.raises(ValueError, match="does not divide C_in=72.*blocks_0/x"):
        lq.check_in_features(72, "blocks_0/x")


@pytest.mark.parametrize("name", REQUIRED_PRESETS)
def test_presets_resolve_pixart(name):
    cfg = QuantConfig.preset(name)
    assert cfg.name == name
    res = cfg.resolve_all(PIXART_LAYERS)
    for path in PIXART_LAYERS[:8]:  # embedders, t_block, final layer: always float
        assert res[path] is None, path
    block = res["blocks_5/attn/qkv"]
    if name == "fp":
        assert all(v is None for v in res.values())
        return
    assert isinstance(block, LayerQuant)
    bits = {"w8a8": (8, 8), "w6a6": (6, 6), "w4a8": (4, 8)}[name.split("-")[1]]
    assert (block.w_bits, block.a_bits) == bits
    assert block.rotate == (name.startswith("quarot") or name.startswith("viditq"))
    assert (block.smooth_alpha is not None) == (name.startswith("smoothquant") or name.startswith("viditq"))
    assert check_rules(cfg, PIXART_LAYERS, warn=False) == []


def test_preset_details():
    assert QuantConfig.preset("naive-w8a8").resolve("blocks_0/mlp/fc1").a_static
    w8 = QuantConfig.preset("viditq-w8a8")
    assert w8.resolve("blocks_0/cross_attn/kv_linear") is None  # cross K/V kept float
    assert w8.resolve("blocks_0/cross_attn/q_linear").smooth_alpha == pytest.approx(0.25)  # a = 0.75
    assert QuantConfig.preset("viditq-w4a8").resolve("blocks_0/cross_attn/kv_linear").w_bits == 4
    mp = QuantConfig.preset("viditq-w4a8-mp")
    assert mp.resolve("blocks_3/mlp/fc2").w_bits == 8
    assert mp.resolve("blocks_3/attn/qkv").w_bits == 4
    assert mp.resolve("blocks_0/attn/qkv").w_bits == 8 and mp.resolve("blocks_27/attn/proj").w_bits == 8
    assert mp.resolve("blocks_2/attn/qkv").rotate
    xla = QuantConfig.preset("viditq-w8a8", backend="xla")
    assert xla.resolve("blocks_1/mlp/fc1").backend == "xla"
    with pytest.raises(ValueError, match="unknown quantization preset"):
        QuantConfig.preset("viditq-w3a3")
    assert set(REQUIRED_PRESETS) <= set(PRESETS)


def test_rule_order_last_match_wins_and_keep_float():
    cfg = QuantConfig(
        default=LayerQuant(w_bits=8),
        rules=(
            LayerRule(r"attn", w_bits=4),
            LayerRule(r"^blocks_1/", None),  # float
            LayerRule(r"^blocks_1/attn/proj$", w_bits=6),  # later rule re-enables
            LayerRule(r"qkv", {"a_bits": 6}),
        ),
    )
    assert cfg.resolve("blocks_0/mlp/fc1").w_bits == 8
    assert cfg.resolve("blocks_0/attn/qkv").w_bits == 4 and cfg.resolve("blocks_0/attn/qkv").a_bits == 6
    assert cfg.resolve("blocks_1/attn/qkv").w_bits == 8  # float, then only a_bits set: starts from LayerQuant()
    assert cfg.resolve("blocks_1/mlp/fc1") is None
    assert cfg.resolve("blocks_1/attn/proj").w_bits == 6
    # keep_float always wins over rules
    cfg2 = cfg.with_rules(LayerRule(".*", w_bits=4))
    assert cfg2.resolve("t_embedder/mlp_0") is None and cfg2.resolve("final_layer/linear") is None
    assert cfg.replace(quantize_cross_kv=False).resolve("blocks_2/cross_attn/kv_linear") is None


def test_rule_validation():
    with pytest.raises(ValueError, match="unknown LayerQuant fields"):
        LayerRule("attn", wbits=4)
    with pytest.raises(ValueError, match="invalid layer regex"):
        LayerRule("attn(", w_bits=4)
    with pytest.raises(ValueError, match="w_bits"):
        LayerRule("attn", w_bits=12)
    with pytest.raises(ValueError, match="group_size"):
        LayerRule("attn", w_group_size=-3)
    with pytest.raises(TypeError):
        QuantConfig(rules=("attn",))
    with pytest.raises(ValueError, match="invalid layer regex"):
        QuantConfig(keep_float=("[",))
    bad = QuantConfig(rules=(LayerRule("mlp", w_granularity="group"),))  # combination invalid
    with pytest.raises(ValueError, match="blocks_0/mlp/fc1.*w_group_size"):
        bad.resolve("blocks_0/mlp/fc1")


def test_check_rules_warns_on_unknown_names():
    cfg = QuantConfig(rules=(LayerRule(r"blocks_\d+/mlp/", w_bits=4), LayerRule(r"attn_tmp/", w_bits=4)))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        unknown = check_rules(cfg, PIXART_LAYERS)
    assert unknown == ["attn_tmp/"]
    assert len(rec) == 1 and "attn_tmp/" in str(rec[0].message)


# ------------------------------------------------------------------------------------ balancing


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


def test_smooth_scale_guards_zeros():
    a = jnp.array([0.0, 1.0, 0.0, 2.0, jnp.inf])
    w = jnp.array([1.0, 0.0, 0.0, 1e-30, 1.0])
    s = np.asarray(smooth_scale(a, w, 0.5))
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    np.testing.assert_array_equal(s[[0, 1, 2, 4]], 1.0)
    assert s[3] == pytest.approx(1e5)  # clipped


def test_incoherence():
    x = np.zeros((4, 8), np.float32)
    x[0] = 1.0
    x[1, 3] = -5.0
    x[3] = np.arange(8)
    inc = np.asarray(incoherence(x))
    np.testing.assert_allclose(inc, [1.0, 8.0, 1.0, 7.0 / 3.5])


def test_balance_for_layer():
    kernel = jnp.ones((72, 8))
    sm, sg = balance_for_layer(kernel, LayerQuant(smooth_alpha=0.5, rotate=True), jnp.full((72,), 4.0),
                               key=layer_key(0, "blocks_0/attn/qkv"), where="blocks_0/attn/qkv")
    np.testing.assert_allclose(sm, 2.0, rtol=1e-6)
    assert sg.shape == (72,)
    sg2 = balance_for_layer(kernel, LayerQuant(rotate=True), key=layer_key(0, "blocks_0/attn/qkv"))[1]
    np.testing.assert_array_equal(sg, sg2)  # deterministic per (seed, path)
    with pytest.raises(ValueError, match="calibration statistics"):
        balance_for_layer(kernel, LayerQuant(smooth_alpha=0.5), None, where="blocks_0/attn/qkv")
    with pytest.raises(ValueError, match="PRNG key"):
        balance_for_layer(kernel, LayerQuant(rotate=True))


def test_w4a8_mp_fitted_to_model_depth():
    from vidq_jax.quant.config import edge_blocks_pattern

    pixart = [f"blocks_{i}/{n}" for i in range(5) for n in ("attn/qkv", "mlp/fc1")] + ["t_block/1"]
    stdit3 = [f"{s}_blocks_{i}/attn/qkv" for i in range(3) for s in ("spatial", "temporal")]
    assert edge_blocks_pattern(pixart) == "^(blocks_0|blocks_4)/"
    assert edge_blocks_pattern(stdit3) == "^(spatial_blocks_0|temporal_blocks_2)/"  # execution order
    with pytest.raises(ValueError, match="no transformer block"):
        edge_blocks_pattern(["t_block/1"])
    mp = QuantConfig.preset("viditq-w4a8-mp", layers=pixart)
    assert check_rules(mp, pixart, warn=False) == []
    assert mp.resolve("blocks_4/attn/qkv").w_bits == 8 and mp.resolve("blocks_2/attn/qkv").w_bits == 4
    assert mp.resolve("blocks_2/mlp/fc1").w_bits == 8
    mp3 = QuantConfig.preset("viditq-w4a8-mp", layers=stdit3)
    assert [mp3.resolve(p).w_bits for p in stdit3] == [8, 4, 4, 4, 4, 8]
    # presets without block-specific rules ignore layers
    assert QuantConfig.preset("viditq-w4a8", layers=pixart) == QuantConfig.preset("viditq-w4a8")

"""QuantConfig / LayerQuant validation, presets, rule resolution (balancing math: test_balance.py)."""

from __future__ import annotations

import warnings

import pytest

from vidq_jax.quant import (
    PRESETS,
    LayerQuant,
    LayerRule,
    QuantConfig,
    check_rules,
)
from models.families import PIXART, STDIT, STDIT3

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
    cfg = QuantConfig.preset(name, model=PIXART, paths=PIXART_LAYERS)
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
    mp = QuantConfig.preset("viditq-w4a8-mp", model=PIXART, paths=PIXART_LAYERS)
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


def test_unmatched_rule_is_an_error_naming_rule_and_model():
    cfg = QuantConfig(rules=(LayerRule("group:ffn", w_bits=4), LayerRule("group:temporal_attn", w_bits=4)))
    with pytest.raises(ValueError, match=r"group:temporal_attn.*match no Dense layer of PixArt"):
        check_rules(cfg.for_model(PIXART), PIXART_LAYERS, model="PixArt (pixart)")
    assert check_rules(cfg.for_model(STDIT), ["blocks_0/attn_temp/qkv", "blocks_0/mlp/fc1"], model="STDiT") == []


def test_group_rules_address_each_familys_layers():
    stdit = ["blocks_0/attn/qkv", "blocks_0/attn_temp/qkv", "blocks_0/cross_attn/kv_linear", "blocks_0/mlp/fc2",
             "t_block/1", "y_embedder/y_proj/fc1", "final_layer/linear"]
    stdit3 = ["spatial_blocks_0/attn/qkv", "temporal_blocks_0/attn/qkv", "temporal_blocks_0/mlp/fc1",
              "temporal_blocks_0/cross_attn/q_linear", "fps_embedder/mlp_0", "t_block/1"]
    cfg = QuantConfig(default=None, rules=(LayerRule("group:temporal_attn", w_bits=4),
                                           LayerRule("group:ffn", w_bits=6)))
    got = {p: (lq.w_bits if (lq := cfg.for_model(STDIT).resolve(p)) else None) for p in stdit}
    assert got == {"blocks_0/attn/qkv": None, "blocks_0/attn_temp/qkv": 4, "blocks_0/cross_attn/kv_linear": None,
                   "blocks_0/mlp/fc2": 6, "t_block/1": None, "y_embedder/y_proj/fc1": None,
                   "final_layer/linear": None}
    got3 = {p: (lq.w_bits if (lq := cfg.for_model(STDIT3).resolve(p)) else None) for p in stdit3}
    assert got3 == {"spatial_blocks_0/attn/qkv": None, "temporal_blocks_0/attn/qkv": 4,
                    "temporal_blocks_0/mlp/fc1": 6, "temporal_blocks_0/cross_attn/q_linear": None,
                    "fps_embedder/mlp_0": None, "t_block/1": None}
    # an unbound config resolves a group as the union of the families' patterns: same answers here
    assert {p: (lq.w_bits if (lq := cfg.resolve(p)) else None) for p in stdit3} == got3
    # default keep-float groups: embedders, adaLN MLP and final layer of every family
    w8 = QuantConfig.preset("dynamic-w8a8").for_model(STDIT3)
    assert [w8.resolve(p) is None for p in stdit3] == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="unknown layer group 'group:fnn'"):
        LayerRule("group:fnn", w_bits=4)
    with pytest.raises(ValueError, match="edge_blocks.*for_model"):
        QuantConfig.preset("viditq-w4a8-mp").resolve("blocks_0/attn/qkv")


def test_saved_recipe_has_no_backend():
    cfg = QuantConfig.preset("viditq-w8a8", backend="pallas").with_rules(LayerRule("group:ffn", backend="xla"))
    d = cfg.to_dict()
    assert "backend" not in d["default"] and all("backend" not in (s or {}) for _, s in d["rules"])
    back = QuantConfig.from_dict(d)
    assert back.default.backend == "auto" and back.resolve("blocks_0/mlp/fc1").backend == "auto"
    d["default"]["backend"] = "xla"  # written by an older version: ignored
    assert QuantConfig.from_dict(d).default.backend == "auto"


def test_w4a8_mp_fitted_to_model_depth():
    pixart = [f"blocks_{i}/{n}" for i in range(5) for n in ("attn/qkv", "mlp/fc1")] + ["t_block/1"]
    stdit3 = [f"{s}_blocks_{i}/attn/qkv" for i in range(3) for s in ("spatial", "temporal")]
    assert PIXART.edge_blocks(pixart) == "^(blocks_0|blocks_4)/"
    assert STDIT3.edge_blocks(stdit3) == "^(spatial_blocks_0|temporal_blocks_2)/"  # execution order
    with pytest.raises(ValueError, match="no transformer block"):
        PIXART.edge_blocks(["t_block/1"])
    mp = QuantConfig.preset("viditq-w4a8-mp", model=PIXART, paths=pixart)
    assert check_rules(mp, pixart, warn=False) == []
    assert mp.resolve("blocks_4/attn/qkv").w_bits == 8 and mp.resolve("blocks_2/attn/qkv").w_bits == 4
    assert mp.resolve("blocks_2/mlp/fc1").w_bits == 8
    mp3 = QuantConfig.preset("viditq-w4a8-mp", model=STDIT3, paths=stdit3)
    assert [mp3.resolve(p).w_bits for p in stdit3] == [8, 4, 4, 4, 4, 8]
    # binding does not change a preset's identity (the recipe)
    assert QuantConfig.preset("viditq-w4a8", model=PIXART, paths=pixart) == QuantConfig.preset("viditq-w4a8")

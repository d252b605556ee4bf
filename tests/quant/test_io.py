"""Quantized folders: ``save_quantized`` -> the one loader ``load_model`` -> the same records, the same outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.checkpoint import load_model, load_quantized, save_model, save_quantized
from vidq_jax.quant import QuantConfig, QuantizedWeight, quantize_params
from vidq_jax.quant.io import quantization_entry, quantized_target


@pytest.fixture(scope="module")
def quantized():
    from tests.fixture_models import random_pixart

    model, params, inputs = random_pixart()
    config = QuantConfig.preset("viditq-w8a8")
    return model, params, quantize_params(params, [inputs], model=model, config=config), config, inputs


def test_save_quantized_round_trip(quantized, tmp_path):
    model, params, qparams, config, inputs = quantized
    out = save_quantized(tmp_path / "q", model, qparams, arch="pixart-alpha", config=config, preset="viditq-w8a8")
    loaded_model, loaded, meta = load_model(out)
    assert meta["quantization"] == quantization_entry(config, None, "viditq-w8a8")
    assert QuantConfig.from_dict(meta["quantization"]["config"]) == config
    assert isinstance(loaded["blocks_0"]["attn"]["qkv"]["kernel"], QuantizedWeight)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(qparams)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(qparams)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(np.asarray(apply({"params": loaded}, **inputs)),
                                  np.asarray(apply({"params": qparams}, **inputs)))
    assert load_quantized(out)[2] == meta
    target = quantized_target(loaded_model, meta)  # abstract: shapes only
    assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(qparams)


def test_load_quantized_refuses_a_float_folder(quantized, tmp_path):
    model, params, *_ = quantized
    out = save_model(tmp_path / "f", model, params, arch="pixart-alpha")
    with pytest.raises(ValueError, match="not a quantized model folder"):
        load_quantized(out)
    with pytest.raises(ValueError, match="no 'quantization' entry"):
        quantized_target(model, load_model(out)[2])


def test_fp8_folder_round_trip(quantized, tmp_path):
    """``dynamic-fp8`` (e4m3 records): saved and loaded like the int8 presets, e4m3 payloads stay e4m3
    on disk, the loaded model computes the same outputs."""
    model, params, _, _, inputs = quantized
    config = QuantConfig.preset("dynamic-fp8")
    qparams = quantize_params(params, [inputs], model=model, config=config)
    rec = qparams["blocks_0"]["attn"]["qkv"]["kernel"]
    assert rec.layer.fp8 and rec.qvalue.dtype == jnp.float8_e4m3fn
    out = save_quantized(tmp_path / "q8", model, qparams, arch="pixart-alpha", config=config, preset="dynamic-fp8")
    _, loaded, meta = load_model(out)
    assert QuantConfig.from_dict(meta["quantization"]["config"]) == config
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(qparams)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(np.asarray(apply({"params": loaded}, **inputs)),
                                  np.asarray(apply({"params": qparams}, **inputs)))


def test_qattn_folder_round_trip(quantized, tmp_path):
    """``viditq-w8a8-qattn`` (quantized attention is a layer rule of the recipe): the folder keeps the rule,
    and the loaded model runs the quantized attention with the same outputs as the in-memory one."""
    model, params, qw8a8, _, inputs = quantized
    config = QuantConfig.preset("viditq-w8a8-qattn")
    assert any(dict(r.settings or ()).get("attn_bits") == 8 for r in config.rules)
    qparams = quantize_params(params, [inputs], model=model, config=config)
    out = save_quantized(tmp_path / "qa", model, qparams, arch="pixart-alpha", config=config,
                         preset="viditq-w8a8-qattn")
    _, loaded, meta = load_model(out)
    assert QuantConfig.from_dict(meta["quantization"]["config"]) == config
    apply = jax.jit(model.apply)
    y_loaded = np.asarray(apply({"params": loaded}, **inputs))
    np.testing.assert_array_equal(y_loaded, np.asarray(apply({"params": qparams}, **inputs)))
    assert not np.array_equal(y_loaded, np.asarray(apply({"params": qw8a8}, **inputs)))  # the attention is quantized

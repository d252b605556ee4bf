"""The method seam (vidq_jax.quant.methods): weight quantization methods by name, the statistics they
declare, and new record kinds plugging into Dense through ``quantized_dense``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from vidq_jax.quant import LayerQuant, LayerRule, QuantConfig, QuantizedWeight, quantize_params, quantized_params_template
from vidq_jax.quant.methods import WEIGHT_METHODS, WeightMethod, layer_statistics, rtn, weight_method
from vidq_jax.quant.tree import dense_paths, get_kernel


@pytest.fixture(scope="module")
def pixart(pixart_batch):
    return pixart_batch


def test_registry_and_validation():
    assert LayerQuant().w_method == "rtn" and weight_method("rtn") is WEIGHT_METHODS["rtn"]
    with pytest.raises(ValueError, match=r"layer 'blocks_0/mlp/fc1': unknown weight quantization method.*'gptqq'"):
        weight_method("gptqq", "blocks_0/mlp/fc1")
    with pytest.raises(ValueError, match="w_method"):
        LayerQuant(w_method="")
    with pytest.raises(ValueError, match="w_method"):
        LayerRule("mlp", w_method=3)
    assert layer_statistics(LayerQuant()) == ()
    assert layer_statistics(LayerQuant(smooth_alpha=0.5)) == ("absmax",)


def test_unknown_method_fails_before_calibration(pixart):
    model, params, _ = pixart
    cfg = QuantConfig.preset("viditq-w4a8").with_rules(LayerRule("(^|/)mlp/", w_method="gptqq"))
    with pytest.raises(ValueError, match=r"layer 'blocks_0/mlp/fc1': unknown weight quantization method"):
        quantize_params(params, None, model=model, config=cfg)  # would otherwise ask for calibration data
    with pytest.raises(ValueError, match="unknown weight quantization method"):
        quantized_params_template(params, cfg)


def test_a_registered_method_gets_its_statistics(pixart, monkeypatch):
    model, params, batch = pixart
    calls = []

    def probe(kernel, layer, *, stats=None, **kw):
        calls.append((kw["name"], layer, stats, kw["smooth"], kw["hadamard_signs"]))
        return rtn.quantize(kernel, layer.replace(w_method="rtn"), stats=stats, **kw)

    monkeypatch.setitem(WEIGHT_METHODS, "probe", WeightMethod("probe", probe, rtn.record_template, ("hessian",)))
    base = QuantConfig.preset("viditq-w4a8", backend="xla")
    cfg = base.replace(default=base.default.replace(w_method="probe"))
    q = quantize_params(params, [batch], model=model, config=cfg)
    ref = quantize_params(params, [batch], model=model, config=base)
    assert {c[0] for c in calls} == {p for p, lq in cfg.resolve_all(dense_paths(params)).items() if lq is not None}
    for path, layer, stats, smooth, signs in calls:
        k = get_kernel(params, path).shape[0]
        assert stats.extra["hessian"].xtx.shape == (k, k)  # the statistic the method declared
        assert (smooth is not None) == (layer.smooth_alpha is not None) and (signs is not None) == layer.rotate
        a, b = get_kernel(q, path), get_kernel(ref, path)
        np.testing.assert_array_equal(a.qvalue, b.qvalue)
        np.testing.assert_array_equal(a.scale, b.scale)


@struct.dataclass
class ExactRecord:
    """A new record kind (float weight, no quantization): plugs into Dense by ``quantized_dense`` alone."""

    kernel: jax.Array

    @property
    def shape(self):
        return tuple(self.kernel.shape)

    def quantized_dense(self, x, bias=None, dtype=None):
        y = jnp.matmul(x.astype(jnp.float32), self.kernel, precision=jax.lax.Precision.HIGHEST)
        return (y if bias is None else y + bias).astype(dtype or x.dtype)


def test_new_record_kind_plugs_into_dense(pixart, monkeypatch):
    model, params, batch = pixart

    def exact(kernel, layer, **kw):
        return ExactRecord(jnp.asarray(kernel, jnp.float32))

    monkeypatch.setitem(WEIGHT_METHODS, "exact", WeightMethod("exact", exact, rtn.record_template))
    cfg = QuantConfig("exact", default=LayerQuant(w_method="exact"))
    q = quantize_params(params, None, model=model, config=cfg)
    assert isinstance(get_kernel(q, "blocks_0/attn/qkv"), ExactRecord)
    assert not isinstance(get_kernel(q, "blocks_0/attn/qkv"), QuantizedWeight)
    apply = jax.jit(model.apply)
    y_fp = np.asarray(apply({"params": params}, **batch))
    y = np.asarray(apply({"params": q}, **batch))
    np.testing.assert_allclose(y, y_fp, rtol=1e-5, atol=1e-5 * np.abs(y_fp).max())


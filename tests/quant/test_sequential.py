"""Sequential quantization (vidq_jax.quant.sequential): GPTQ layers get their Hessian from the model with the
earlier blocks already quantized; stages follow the execution order, block by block."""

from __future__ import annotations

import numpy as np
import pytest

from vidq_jax.quant import LayerRule, QuantConfig, collect_stats, get_kernel, quantize_params, sequential
from vidq_jax.quant.methods import WEIGHT_METHODS, WeightMethod, gptq
from vidq_jax.quant.sequential import execution_order, stages

FIRST, SECOND = "blocks_0/mlp/fc1", "blocks_1/mlp/fc1"


def test_stages_follow_execution_order_block_by_block(pixart_batch):
    model, params, batch = pixart_batch
    order = execution_order(model, params, batch, ["final_layer/linear", SECOND, "blocks_0/attn/qkv", FIRST])
    assert order == ["blocks_0/attn/qkv", FIRST, SECOND, "final_layer/linear"]
    assert stages(order, model) == [["blocks_0/attn/qkv", FIRST], [SECOND], ["final_layer/linear"]]


def test_gptq_hessian_comes_from_the_partly_quantized_model(pixart_batch, monkeypatch):
    model, params, batch = pixart_batch
    seen, passes = {}, []

    def probe(kernel, layer, *, stats=None, name="", **kw):
        seen[name] = stats
        return gptq.quantize(kernel, layer, stats=stats, name=name, **kw)

    def collect(model, tree, batches, **kw):
        out = collect_stats(model, tree, batches, **kw)
        passes.append((tree, kw, out))
        return out

    monkeypatch.setitem(WEIGHT_METHODS, "gptq", WeightMethod("gptq", probe, WEIGHT_METHODS["gptq"].template,
                                                             ("hessian",), sequential=True))
    monkeypatch.setattr(sequential, "collect_stats", collect)
    cfg = QuantConfig("seq", default=None, rules=(LayerRule(r"^blocks_[01]/mlp/fc1$", w_bits=4, w_method="gptq"),))
    q, fp = quantize_params(params, [batch], model=model, config=cfg, return_stats=True)
    # the first stage had nothing quantized before it: the float model's Hessian
    assert seen[FIRST] is fp[FIRST]
    # the second: one pass of the model whose first block's layer is quantized (the record now in q)
    [(tree, kw, out)] = passes
    assert kw["paths"] == [SECOND] and "hessian" in kw["statistics"]
    assert get_kernel(tree, FIRST) is get_kernel(q, FIRST) and not hasattr(get_kernel(tree, SECOND), "qvalue")
    assert seen[SECOND] is out[SECOND]
    assert not np.allclose(out[SECOND].extra["hessian"].xtx, fp[SECOND].extra["hessian"].xtx, rtol=1e-3)

    # without calibration batches (statistics given): the float model's statistics, with a warning
    seen.clear()
    with pytest.warns(UserWarning, match="float model's statistics"):
        quantize_params(params, None, model=model, config=cfg, stats=fp)
    assert seen[SECOND] is fp[SECOND]

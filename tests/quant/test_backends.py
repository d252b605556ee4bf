"""The backend seam's Q-DiT path: per-token-per-group activations (and per-group weights the W4A8 kernel does
not take) run ``pallas_kernels.group_gemm`` on ``pallas`` with the ``xla`` backend's codes; shapes without a
tiling fall back to ``xla`` (logged once)."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._compat import pltriton
from vidq_jax.quant import backends
from vidq_jax.quant.config import PRESETS, LayerQuant
from vidq_jax.quant.record import quantize_weight


def _record_and_input(layer: LayerQuant, k: int = 128, n: int = 32, seed: int = 0):
    r = np.random.default_rng(seed)
    kernel = jnp.asarray(r.normal(size=(k, n)) * 0.05, jnp.float32)
    x = jnp.asarray(r.normal(size=(2, 5, k)) * 2 + 0.3, jnp.float32)  # asymmetric ranges per group
    bias = jnp.asarray(r.normal(size=n), jnp.float32)
    return jax.jit(functools.partial(quantize_weight, layer=layer.fitted(k)))(kernel), x, bias


def _run(rec, backend, x, bias):
    return jax.jit(lambda r, x: r.with_backend(backend).quantized_dense(x, bias, jnp.float32))(rec, x)


def test_which_layers_take_the_group_gemm():
    for name in ("qdit-w4a8", "qdit-w6a8"):
        assert backends.needs_group_gemm(PRESETS[name]().default)
    token = LayerQuant(w_bits=4, w_granularity="group", w_group_size=64)
    assert backends.needs_group_gemm(token)  # asymmetric per-group int4: not the W4A8 kernel's format
    assert not backends.needs_group_gemm(token.replace(w_symmetric=True))  # the W4A8 per-group kernel
    assert not backends.needs_group_gemm(LayerQuant())  # per-channel W8A8
    assert not backends.needs_group_gemm(LayerQuant(a_bits=None, w_granularity="group", w_group_size=64))


@pytest.mark.skipif(pltriton is None, reason="Pallas-Triton not importable in this JAX")
@pytest.mark.parametrize("preset", ["qdit-w4a8", "qdit-w6a8"])
def test_pallas_equals_xla_on_qdit_records(preset, monkeypatch):
    """The kernel (interpret mode) gets the xla backend's codes: outputs equal up to float summation order."""
    layer = PRESETS[preset]().default.replace(w_group_size=64, a_group_size=64)
    rec, x, bias = _record_and_input(layer)
    monkeypatch.setattr(pk, "group_gemm", functools.partial(pk.group_gemm, backend="triton"))
    y_xla, y_pal = _run(rec, "xla", x, bias), _run(rec, "pallas", x, bias)
    assert y_pal.shape == (2, 5, 32)
    assert float(jnp.linalg.norm(y_pal - y_xla) / jnp.linalg.norm(y_xla)) < 1e-5


def test_no_tiling_falls_back_to_xla_once(caplog):
    layer = PRESETS["qdit-w4a8"]().default.replace(w_group_size=16, a_group_size=16)  # 8-byte int4 tiles
    rec, x, bias = _record_and_input(layer)
    with caplog.at_level(logging.WARNING, logger="vidq_jax.quant"):
        for _ in range(2):
            assert backends.pallas_dense(rec, x.reshape(-1, 128), bias, jnp.float32) is None
    assert sum("group GEMM has no tiling" in r.message for r in caplog.records) <= 1
    np.testing.assert_array_equal(np.asarray(_run(rec, "pallas", x, bias)), np.asarray(_run(rec, "xla", x, bias)))

"""Package-level contracts: jax-only imports, keyword options + the one debug override, the activation
registry, the column split."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels._debug import DEBUG_ENV, debug_override, parse_debug
from pallas_kernels.ops.w8a8_linear import activation_quant_backend
from pallas_kernels.testing import rand_int, rand_scale, rand_x


def test_package_imports_jax_alone():
    code = ("import sys, pallas_kernels, pallas_kernels.gpu_check; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'vidq_jax', 'conversion', 'torch')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2],
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_epilogue_activation_registry():
    assert tuple(pk.EPILOGUE_ACTIVATIONS) == ("gelu_tanh",)
    y = jax.random.normal(jax.random.key(0), (64,)) * 4
    act = pk.EPILOGUE_ACTIVATIONS["gelu_tanh"]
    np.testing.assert_array_equal(np.asarray(act(y)), np.asarray(jax.nn.gelu(y, approximate=True)))
    for form in act.kernel_forms.values():
        np.testing.assert_allclose(np.asarray(form(y)), np.asarray(act(y)), rtol=1e-5, atol=1e-5)


def test_column_blocks():
    w = rand_int(1, (6, 4), -127, 127)
    blocks = pk.column_blocks(w, 3, axis=0)
    assert len(blocks) == 3 and all(b.shape == (2, 4) for b in blocks)
    np.testing.assert_array_equal(np.asarray(jnp.concatenate(blocks)), np.asarray(w))
    assert pk.column_blocks(w, 1) == (w,) and pk.column_blocks(None, 2) == (None, None)
    with pytest.raises(ValueError, match="do not split"):
        pk.column_blocks(w, 4, axis=0)


def test_act_quant_option_and_debug_override(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert activation_quant_backend("xla") == "xla"
    assert activation_quant_backend("mosaic", "xla") == "xla"
    with pytest.raises(ValueError, match="act_quant"):
        activation_quant_backend("mosaic", "cuda")
    assert debug_override("approx_gelu", True) is True  # unset: the argument stands
    monkeypatch.setenv(DEBUG_ENV, "act_quant=xla, approx_gelu=0,fuse_activation=1")
    assert parse_debug("act_quant=xla, approx_gelu=0,fuse_activation=1") == {
        "act_quant": "xla", "approx_gelu": False, "fuse_activation": True}
    with pytest.warns(RuntimeWarning, match=DEBUG_ENV):
        assert debug_override("approx_gelu", True) is False
    assert activation_quant_backend("triton", "triton") == "xla"
    for bad in ("act_quant=cuda", "approx_gelu", "speed=1"):
        with pytest.raises(ValueError, match=DEBUG_ENV):
            parse_debug(bad)


@pytest.mark.parametrize("backend", ["xla", "triton"])
def test_linear_options_are_keyword_arguments(backend, monkeypatch):
    """act_quant / approx_gelu / fuse_activation are accepted by both linears (Mosaic-only effects:
    off Hopper the results equal the defaults')."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    m, k, n = 9, 128, 64
    x, wq, ws = rand_x(3, m, k), rand_int(4, (n, k), -127, 127), rand_scale(5, (n,)) * 30
    opts = dict(act_quant="xla", approx_gelu=False, fuse_activation=False, activation="gelu_tanh", backend=backend)
    np.testing.assert_array_equal(np.asarray(pk.w8a8_linear(x, wq, ws, **opts)),
                                  np.asarray(pk.w8a8_linear(x, wq, ws, activation="gelu_tanh", backend=backend)))
    w4 = pk.pack_int4(rand_int(6, (n, k), -8, 7))
    np.testing.assert_array_equal(np.asarray(pk.w4a8_linear(x, w4, ws, **opts)),
                                  np.asarray(pk.w4a8_linear(x, w4, ws, activation="gelu_tanh", backend=backend)))

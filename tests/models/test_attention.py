"""The attention seam (models.attention): per-kind implementations and per-layer records."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention as seam
from models.layers import PixArtBlock, SelfAttention


class _Record:
    """A stand-in per-layer attention record: scales the reference output and logs the calls."""

    def __init__(self, calls):
        self.calls = calls

    def attend(self, q, k, v, key_mask, *, kind):
        self.calls.append(kind)
        impl = seam.reference_frame_attention if kind == "temporal" else seam.reference_attention
        out = impl(q, k, v) if kind == "temporal" else impl(q, k, v, key_mask)
        return 2.0 * out


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_registered_implementation_is_used_and_restored():
    q, k, v = (_x((2, 5, 2, 8), s) for s in range(3))
    ref = seam.attend(q, k, v, kind="self")
    calls = []
    seam.register("self", lambda q, k, v, m: (calls.append(m), -seam.reference_attention(q, k, v, m))[1])
    try:
        np.testing.assert_allclose(np.asarray(seam.attend(q, k, v, kind="self")), -np.asarray(ref), rtol=1e-6)
        assert calls == [None]
    finally:
        seam.register("self", None)
    np.testing.assert_array_equal(np.asarray(seam.attend(q, k, v, kind="self")), np.asarray(ref))
    with pytest.raises(ValueError, match="unknown attention kind"):
        seam.register("window", None)
    with pytest.raises(ValueError, match="no key mask"):
        seam.attend(q[:, None], k[:, None], v[:, None], jnp.ones((2, 5), bool), kind="temporal")


@pytest.mark.parametrize("temporal", [False, True])
def test_per_layer_record_in_params_runs_instead(temporal):
    """A record under params[...]["attention"] replaces that layer's attention: no model edit."""
    mod = SelfAttention(num_heads=2, temporal=temporal)
    x = _x((2, 3 * 4, 16))
    params = mod.init(jax.random.key(1), x, 3)["params"]
    calls = []
    with_rec = {**params, seam.RECORD_KEY: _Record(calls)}
    out = mod.apply({"params": with_rec}, x, 3)
    assert calls == ["temporal" if temporal else "self"]
    # the record doubled the attention output: proj is linear, so out - bias doubles too
    base = mod.apply({"params": params}, x, 3)
    bias = params["proj"]["bias"]
    np.testing.assert_allclose(np.asarray(out - bias), 2 * np.asarray(base - bias), rtol=1e-5, atol=1e-5)


def test_cross_attention_record_gets_the_key_mask():
    blk = PixArtBlock(16, 2, 2.0)
    x, y = _x((2, 4, 16)), _x((2, 3, 16), 1)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    t0 = _x((2, 96), 2)
    params = blk.init(jax.random.key(0), x, y, mask, t0)["params"]
    calls = []
    params = {**params, "cross_attn": {**params["cross_attn"], seam.RECORD_KEY: _Record(calls)}}
    blk.apply({"params": params}, x, y, mask, t0)
    assert calls == ["cross"]

"""Round-to-nearest with the MSE clip search (w_method="rtn-mse", Q-DiT's quant_method="mse")."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vidq_jax.quant import LayerQuant
from vidq_jax.quant.methods import WEIGHT_METHODS, mse, rtn


def _lp(w, rec, group):
    err = np.abs(np.asarray(rec.dequantize()) - w) ** mse.NORM_P
    return err.reshape(w.shape[0], -1, group).mean(-1)  # (N, G)


def test_clip_search_never_loses_to_min_max_and_keeps_the_record_layout():
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(64, 128)).astype(np.float32)  # heavy tails: clipping pays off
    lq = LayerQuant(w_bits=4, w_granularity="group", w_group_size=32, a_bits=8, a_granularity="group",
                    a_group_size=32, a_symmetric=False)
    a = WEIGHT_METHODS["rtn-mse"].quantize(jnp.asarray(w.T), lq)
    b = rtn.quantize(jnp.asarray(w.T), lq)
    la, lb = _lp(w, a, 32), _lp(w, b, 32)
    assert np.all(la <= lb * (1 + 1e-6)) and la.mean() < 0.97 * lb.mean()
    assert a.qvalue.shape == b.qvalue.shape and a.scale.shape == b.scale.shape == (64, 4)
    assert np.all(np.asarray(a.scale) <= np.asarray(b.scale) * (1 + 1e-6))  # only ever shrinks the range

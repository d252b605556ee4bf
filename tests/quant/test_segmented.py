"""The segmented weight record (vidq_jax.quant.segmented): per-step weight switching inside one trace
of the sampler, and ``vidq_jax.pipeline.sample(..., plan=...)``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.fixture_models import fixture_model

from vidq_jax.quant import QuantConfig, quantize_params
from vidq_jax.quant.config import BLOCK_LAYERS
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.segmented import FloatKernel, SegmentedWeight, segment_apply_fn, segmented_layers, with_segment

# fixture PixArt, DPM-Solver: deterministic


@pytest.fixture(scope="module")
def pixart():
    model, params, cond, shape = fixture_model("pixart_alpha_ms")
    return model, params, cond, jax.random.normal(jax.random.PRNGKey(0), shape)


def test_segment_plan_switches_weights_per_step_in_one_trace(pixart):
    from vidq_jax import pipeline, sampling

    model, params, cond, noise = pixart
    base = QuantConfig.preset("dynamic-w8a8", backend="xla")  # no calibration needed
    plan = MixedPrecisionPlan("w4-then-float", 4, (0, 2), (BitsRule(BLOCK_LAYERS, 4, segments=(0,)),
                                                          BitsRule(BLOCK_LAYERS, None, segments=(1,))))
    q = quantize_params(params, None, model=model, config=base, plan=plan)
    rec = q["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert isinstance(rec, SegmentedWeight) and isinstance(rec.variants[1], FloatKernel)
    assert rec.variants[0].w_bits == 4 and list(np.asarray(rec.segment_variant)) == [0, 1]

    # one trace of the model for the whole 4-step loop
    traces = []
    inner = segment_apply_fn(model, (0, 0, 1, 1))

    def counting(p, x, t, **kw):
        traces.append(1)
        return inner(p, x, t, **kw)

    uncond = pipeline.null_condition(model, params, cond)
    _, traj = sampling.sample_dpm_solver(counting, q, noise, cond, uncond, steps=4, step_kwarg="step",
                                         return_trajectory=True)
    assert len(traces) == 1

    w4 = quantize_params(params, None, model=model, config=base.with_rules(*plan.segment_rules(0)))
    _, traj_w4 = pipeline.sample(model, w4, noise, cond, steps=4, return_trajectory=True)
    _, traj_fp = pipeline.sample(model, params, noise, cond, steps=4, return_trajectory=True)
    # steps 0, 1 ran the W4 variant, steps 2, 3 the float one
    np.testing.assert_allclose(traj[:2], traj_w4[:2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(traj[3], traj_w4[3], atol=1e-4) and not np.allclose(traj[3], traj_fp[3], atol=1e-4)
    # an all-float table reproduces the float model
    all_fp = pipeline.sample(model, q, noise, cond, plan=(1, 1, 1, 1), steps=4)
    np.testing.assert_allclose(all_fp, traj_fp[-1], rtol=1e-4, atol=1e-4)


def test_with_segment_and_plan_table_errors(pixart):
    from vidq_jax import pipeline

    model, params, cond, noise = pixart
    plan = MixedPrecisionPlan("late-float", 2, (0, 1), (BitsRule(BLOCK_LAYERS, None, segments=(1,)),))
    q = quantize_params(params, None, model=model, config=QuantConfig.preset("dynamic-w8a8", backend="xla"), plan=plan)
    layers = segmented_layers(q)
    assert layers and all(int(r.segment) == 0 for r in layers)
    assert all(int(r.segment) == 1 for r in segmented_layers(with_segment(q, 1)))
    assert segmented_layers(params) == []
    with pytest.raises(ValueError, match="3 entries for 2 steps"):
        pipeline.sample(model, q, noise, cond, plan=(0, 1, 1), steps=2)

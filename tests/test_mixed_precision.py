"""Timestep-segment mixed precision: the published Open-Sora 1.0 W4A8-MP table, the plan format,
per-step weight switching inside one trace, the sensitivity sweep and the allocator."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from test_quant_fixtures import fixture_model

from vidq_jax.quant import QuantConfig, quantize_params
from vidq_jax.quant.config import BLOCK_LAYERS
from vidq_jax.quant.mixed_precision import (
    BitsRule,
    FloatKernel,
    MixedPrecisionPlan,
    SegmentedWeight,
    layer_group,
    quantize_params_mp,
    sample,
    segment_apply_fn,
)
from vidq_jax.quant.sensitivity import Sensitivity, Unit, allocate_bits, measure_sensitivity

# ---------------------------------------------------------------------------------------------
# The published table (viditq_method.md §5.3), written independently of the plan's rules:
# OpenSora v1.0 STDiT-XL/2 with split q/k/v, 13 linears x 28 blocks = 364 layers, 20 IDDPM steps
# indexed 19 (noisiest) .. 0.
# ---------------------------------------------------------------------------------------------
ORIGINAL_LAYERS = ["attn.q", "attn.k", "attn.v", "attn.proj", "attn_temp.q", "attn_temp.k", "attn_temp.v",
                   "attn_temp.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                   "mlp.fc1", "mlp.fc2"]


def published_weight_bits(block: int, layer: str, index: int) -> int:
    if 15 <= index <= 19:  # range 19-15: all layers W8
        return 8
    if layer.startswith("mlp."):
        return 8
    if index <= 4 and block == 23 and layer.startswith("attn_temp."):  # range 4-0 extra
        return 8
    return 4


def our_path(block: int, layer: str) -> str:
    mod, lin = layer.split(".")
    if lin in ("q", "k", "v"):
        lin = "qkv"  # fused in this package
    return f"blocks_{block}/{mod}/{lin}"


def test_published_opensora_plan_equals_table():
    plan = MixedPrecisionPlan.opensora_v1_w4a8()
    base = QuantConfig.preset("viditq-w4a8")
    layers = [(j, name) for j in range(28) for name in ORIGINAL_LAYERS]
    assert len(layers) == 364
    paths = sorted({our_path(j, n) for j, n in layers}) + ["t_block/1", "final_layer/linear", "y_embedder/y_proj/fc1"]
    table = plan.bits_table(paths, base)
    cfgs = [plan.config_for_segment(base, s) for s in range(plan.num_segments)]
    for step in range(20):
        seg = plan.segment_of_step(step)
        index = 19 - step  # the table's IDDPM index; step 0 is the noisiest
        for j, name in layers:
            p = our_path(j, name)
            assert table[p][seg] == published_weight_bits(j, name, index), (p, step)
            assert cfgs[seg].resolve(p).a_bits == 8
        for p in ("t_block/1", "final_layer/linear", "y_embedder/y_proj/fc1"):
            assert table[p][seg] is None  # embedders / t_block / final layer stay float
    assert plan.step_segments() == tuple(s for s in range(4) for _ in range(5))
    assert MixedPrecisionPlan.from_json(plan.to_json()) == plan


def test_plan_validation_and_stretching():
    with pytest.raises(ValueError, match="boundaries"):
        MixedPrecisionPlan("x", 10, (1, 5), ())
    with pytest.raises(ValueError, match="segments"):
        MixedPrecisionPlan("x", 10, (0, 5), (BitsRule("mlp", 4, segments=(2,)),))
    with pytest.raises(ValueError, match="w_bits"):
        BitsRule("mlp", 3.5)
    plan = MixedPrecisionPlan("x", 20, (0, 5, 10, 15), ())
    assert plan.step_segments(8) == (0, 0, 1, 1, 2, 2, 3, 3)  # a shorter run maps proportionally
    with pytest.warns(UserWarning, match="blocks_99"):
        MixedPrecisionPlan("x", 4, (0,), (BitsRule("^blocks_99/", 8),)).check(["blocks_0/mlp/fc1"])
    assert layer_group("blocks_0/attn_temp/qkv") == "temporal_attn"
    assert layer_group("temporal_blocks_1/attn/qkv") == "temporal_attn"
    assert layer_group("spatial_blocks_1/attn/proj") == "spatial_attn"
    assert layer_group("blocks_2/cross_attn/kv_linear") == "cross_attn"
    assert layer_group("blocks_2/mlp/fc2") == "ffn" and layer_group("t_block/1") is None


# ---------------------------------------------------------------------------------------------
# per-step switching in one trace (fixture PixArt, DPM-Solver: deterministic)
# ---------------------------------------------------------------------------------------------


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
    q = quantize_params_mp(params, None, model=model, config=base, plan=plan)
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
    all_fp = sample(model, q, noise, cond, plan=(1, 1, 1, 1), steps=4)
    np.testing.assert_allclose(all_fp, traj_fp[-1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# sensitivity + allocation
# ---------------------------------------------------------------------------------------------


def test_sensitivity_sweep_on_fixture(pixart):
    from vidq_jax.calibration import collect
    from vidq_jax.quant.sensitivity import find_units

    model, params, cond, noise = pixart
    calib = list(collect(model, params, cond, steps=2, latent_shape=noise.shape[1:]))
    base = QuantConfig.preset("viditq-w4a8")
    units = find_units(params, base)
    assert {u.group for u in units} == {"cross_attn", "spatial_attn", "ffn"}  # image model: no temporal attention
    assert len(units) == 6 and units[0].block == "blocks_0"
    units = [u for u in units if u.block == "blocks_1"]
    sens = measure_sensitivity(model, params, calib, config=base, noise=noise, cond=cond, num_steps=2,
                               boundaries=(0, 1), units=units)
    assert len(sens.units) == 3 and sens.low_bits == 4
    for u, row in zip(sens.units, sens.scores):
        assert len(row) == 2
        for sc in row:
            assert sc["fidelity"] > 0 and np.isfinite(sc["metric"])
            if u.group == "cross_attn":
                assert sc["metric"] == sc["text"] and 0 <= sc["text"] <= 2
    plan = allocate_bits(sens, budget_bits=6.0)
    avg = plan.average_bits(params, base)
    assert 4.0 < avg <= 6.0 + 1e-9


def _synthetic(sizes=(10, 10, 20), metrics=((1.0, 0.1), (0.5, 0.4), (0.2, 0.3))):
    groups = ["cross_attn", "spatial_attn", "ffn"]
    units = [Unit(f"blocks_{i}", groups[i], f"^blocks_{i}/", (f"blocks_{i}/x",), s) for i, s in enumerate(sizes)]
    scores = [[{"fidelity": m, "temporal": m, "text": m, "metric": m} for m in row] for row in metrics]
    return Sensitivity(units, 4, (0, 2), 4, scores)


def test_allocator_budget_extremes_and_ranking():
    sens = _synthetic()
    none = allocate_bits(sens, budget_bits=4.0)
    assert [r.w_bits for r in none.rules] == [4]
    full = allocate_bits(sens, budget_bits=8.0)
    assert all(r.segments == () for r in full.rules[1:]) and len(full.rules) == 4
    # a budget for exactly one 10-element unit-segment: the most sensitive (unit 0, segment 0)
    total = sum(u.size for u in sens.units) * 4  # element-steps
    one = allocate_bits(sens, budget_bits=4 + 10 * 2 * 4 / total)
    assert [(r.pattern, r.segments) for r in one.rules[1:]] == [("^blocks_0/", (0,))]
    with pytest.raises(ValueError, match="budget_bits"):
        allocate_bits(sens, budget_bits=9)

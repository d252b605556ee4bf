"""Metric-decoupled sensitivity and bit allocation (vidq_jax.quant.sensitivity, vidq_jax.quant.groups):
layer groups and units of a fixture model, the sweep (with the release sampler and with an injected
sampler), and the allocator's budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixture_models import fixture_model

from vidq_jax.quant import QuantConfig
from vidq_jax.quant.groups import block_of, layer_group
from vidq_jax.quant.segmented import segment_apply_fn
from vidq_jax.quant.sensitivity import Sensitivity, Unit, allocate_bits, find_units, measure_sensitivity


@pytest.fixture(scope="module")
def pixart():
    model, params, cond, shape = fixture_model("pixart_alpha_ms")
    return model, params, cond, jax.random.normal(jax.random.PRNGKey(0), shape)


def test_layer_groups():
    assert layer_group("blocks_0/attn_temp/qkv") == "temporal_attn"
    assert layer_group("temporal_blocks_1/attn/qkv") == "temporal_attn"
    assert layer_group("spatial_blocks_1/attn/proj") == "self_attn"
    assert layer_group("blocks_2/cross_attn/kv_linear") == "cross_attn"
    assert layer_group("blocks_2/mlp/fc2") == "ffn" and layer_group("t_block/1") is None
    assert block_of("temporal_blocks_1/attn/qkv") == "temporal_blocks_1" and block_of("t_block/1") == ""


def test_sensitivity_sweep_on_fixture(pixart):
    from vidq_jax import pipeline
    from vidq_jax.calibration import collect

    model, params, cond, noise = pixart
    calib = list(collect(model, params, cond, steps=2, latent_shape=noise.shape[1:]))
    base = QuantConfig.preset("viditq-w4a8")
    units = find_units(params, base)
    assert {u.group for u in units} == {"cross_attn", "self_attn", "ffn"}  # image model: no temporal attention
    assert len(units) == 6 and units[0].block == "blocks_0"
    units = [u for u in units if u.block == "blocks_1"]
    sens = measure_sensitivity(model, params, calib, config=base, noise=noise, cond=cond, num_steps=2,
                               boundaries=(0, 1), units=units, sample_fn=pipeline.sample)
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
    groups = ["cross_attn", "self_attn", "ffn"]
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


def test_allocator_never_exceeds_the_budget():
    sens = _synthetic()
    steps = (2, 2)  # segments of the synthetic 4-step plan (0, 2)
    total = sum(u.size for u in sens.units) * 4
    previous = 4.0
    for budget in np.linspace(4.0, 8.0, 9):
        plan = allocate_bits(sens, budget_bits=float(budget))
        spent = 0
        for r in plan.rules[1:]:  # "^blocks_i/" promoted to 8 bits in r.segments (empty = all)
            size = next(u.size for u in sens.units if u.pattern == r.pattern)
            spent += sum(size * steps[s] * (8 - 4) for s in (r.segments or range(2)))
        avg = 4.0 + spent / total
        assert previous - 1e-9 <= avg <= budget + 1e-9
        previous = avg
    assert previous == pytest.approx(8.0)


def test_measurement_with_an_injected_sampler(pixart):
    """quant does not sample by itself: any sampler of segment-planned params can drive the sweep."""
    from vidq_jax.calibration import collect

    model, params, cond, noise = pixart
    calls = []
    fns = {}

    def euler(model, params, noise, cond, uncond, *, plan, steps, key=None):
        table = plan.step_segments(steps)
        calls.append((plan.num_segments, table))
        if table not in fns:
            fns[table] = jax.jit(segment_apply_fn(model, table))
        x = noise
        for i in range(steps):
            t = jnp.full((x.shape[0],), 900.0 - 400.0 * i)
            x = x - 0.5 * fns[table](params, x, t, step=i, **cond)[..., : x.shape[-1]]
        return x

    calib = list(collect(model, params, cond, steps=2, latent_shape=noise.shape[1:]))
    base = QuantConfig.preset("viditq-w4a8")
    units = [u for u in find_units(params, base) if u.block == "blocks_0"]
    sens = measure_sensitivity(model, params, calib, config=base, noise=noise, cond=cond, num_steps=2,
                               boundaries=(0, 1), units=units, sample_fn=euler)
    assert calls == [(2, (0, 1))] * (1 + 2 * len(units))  # the reference run + every unit in every segment
    assert [[sc["fidelity"] > 0 for sc in row] for row in sens.scores] == [[True, True]] * len(units)
    plan = allocate_bits(sens, budget_bits=5.0)
    assert plan.average_bits(params, base) <= 5.0 + 1e-9

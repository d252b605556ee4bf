"""Calibration batches recorded along FP sampling trajectories (vidq_jax.calibration.collect)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixture_models import fixture_model

from vidq_jax import pipeline, sampling
from vidq_jax.calibration import CalibBatch, collect, random_conditioning
from vidq_jax.quant import QuantConfig, collect_stats, quantize_params


@pytest.fixture(scope="module")
def stdit3():
    return fixture_model("opensora_v1_2_stdit3")


def test_collect_slices_the_trajectory(stdit3):
    model, params, cond, shape = stdit3
    key = jax.random.PRNGKey(3)
    batches = list(collect(model, params, cond, num_prompts=2, prompt_batch=1, every_k_steps=2, steps=5,
                           latent_shape=shape[1:], noise_key=key, num_frames=51))
    assert all(isinstance(b, CalibBatch) for b in batches)
    assert [(b.prompt_start, b.step) for b in batches] == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 2), (1, 4)]
    ts = sampling.get("rflow").timesteps(5, (1, *shape[1:]), num_frames=51)
    assert [b.timestep for b in batches[:3]] == pytest.approx([ts[0], ts[2], ts[4]])
    b = batches[1].batch
    # both CFG halves: 2 rows per prompt, cond first, uncond = the learned null caption
    assert b["x"].shape == (2, *shape[1:]) and b["timestep"].shape == (2,)
    np.testing.assert_array_equal(b["x"][0], b["x"][1])
    np.testing.assert_allclose(b["y"][0], cond["y"][0])
    np.testing.assert_allclose(b["y"][1], params["y_embedder"]["y_embedding"])
    assert float(b["timestep"][0]) == pytest.approx(ts[2])
    # x of step 2 is trajectory[1] of the same sampling run (same noise recipe)
    k_noise, _ = jax.random.split(jax.random.fold_in(key, 0))
    noise = jax.random.normal(k_noise, (1, *shape[1:]))
    _, traj = pipeline.sample(model, params, noise, {k: v[:1] for k, v in cond.items()}, steps=5,
                              return_trajectory=True, num_frames=51)
    np.testing.assert_allclose(b["x"][:1], traj[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batches[0].batch["x"][:1], noise)
    # CalibBatch records go to quantize_params as they are (names reach the errors: NaN caught
    # although XLA's CPU max reduction drops NaN)
    q = quantize_params(params, batches[:2], model=model, config=QuantConfig.preset("smoothquant-w8a8"))
    assert q is not None
    bad = b | {"x": b["x"].at[0, 0, 0, 0, 0].set(jnp.nan)}
    with pytest.raises(ValueError, match=r"'spatial_blocks_0/attn/qkv' in my-bad-batch"):
        collect_stats(model, params, [batches[0], CalibBatch("my-bad-batch", bad, 1, 0.0, 0)])


def test_collect_errors(stdit3):
    model, params, cond, shape = stdit3
    with pytest.raises(ValueError, match="num_prompts"):
        next(collect(model, params, cond, num_prompts=5, latent_shape=shape[1:]))
    with pytest.raises(ValueError, match="every_k_steps"):
        next(collect(model, params, cond, every_k_steps=0, latent_shape=shape[1:]))


def test_random_conditioning_matches_model_inputs(stdit3):
    model, _, _, _ = stdit3
    cond = random_conditioning(model, 3)
    assert cond["y"].shape[0] == 3 and cond["mask"].shape[0] == 3 and set(cond) >= {"fps", "height", "width"}

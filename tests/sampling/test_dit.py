"""DiT's release sampling (sample.py: IDDPM respaced to 250 steps, cfg 4.0, forward_with_cfg guiding eps
channels 0..2 against the null class) through vidq_jax.pipeline, label checks, and calibration +
quantization of a DiT exactly as of PixArt (class labels as the condition)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.dit import DiT
from tests.fixture_models import fixture_model
from vidq_jax import pipeline, sampling
from vidq_jax.calibration import collect, random_conditioning
from vidq_jax.quant import quantization_summary, quantize_params
from vidq_jax.sampling import SamplingArgumentError


@pytest.fixture(scope="module")
def dit():
    return fixture_model("facebook_dit_xl_style")


def test_release_sampler_is_dits(dit):
    """sample.py: create_diffusion("250") (linear betas 1e-4..0.02 over 1000 steps, learned range, even
    respacing: the IDDPM sampler, checked against improved-diffusion's formulas in test_samplers.py) with
    forward_with_cfg at cfg 4.0 on [labels; null class], guiding eps channels 0..2."""
    model, params, cond, shape = dit
    assert pipeline.sampler_settings(model) == {"sampler": "iddpm", "steps": 250, "guidance_scale": 4.0}
    ts = sampling.get("iddpm").timesteps(250, shape)
    np.testing.assert_array_equal(ts, [round(i * 999 / 249) for i in range(250)][::-1])
    noise = jax.random.normal(jax.random.PRNGKey(0), shape)
    key = jax.random.PRNGKey(7)
    # (return_trajectory as calibration runs it: one compiled loop for both tests)
    got, _ = pipeline.sample(model, params, noise, cond, steps=4, key=key, return_trajectory=True)
    null = {"y": jnp.full((2,), 10, jnp.int32)}
    labels = {"y": jnp.asarray(cond["y"], jnp.int32)}
    ref, _ = sampling.sample_iddpm(pipeline.apply_fn_for(model), params, noise, labels, null, key=key, steps=4,
                                   guidance_scale=4.0, cfg_channels=3, return_trajectory=True)
    np.testing.assert_array_equal(got, ref)
    assert bool(jnp.isfinite(got).all())


def test_labels_are_checked(dit):
    model, params, cond, shape = dit
    assert pipeline.null_condition(model, params, cond)["y"].tolist() == [10, 10]
    noise = jnp.zeros(shape)
    for bad, match in (([3, 11], r"class labels in \[0, 10\] \(10 = the null class\), got \[11\]"),
                       ([3.0, 1.0], "integer class labels"), ([[3], [1]], "integer class labels")):
        with pytest.raises(SamplingArgumentError, match=match):
            pipeline.sample(model, params, noise, {"y": np.asarray(bad)}, steps=2, key=jax.random.PRNGKey(0))
    # a DiT trained without label dropout has no null class: CFG is refused, label 10 is out of range
    plain = DiT(dataclasses.replace(model.config, use_cfg_embedding=False))
    with pytest.raises(SamplingArgumentError, match="no null class"):
        pipeline.null_condition(plain, params, cond)
    with pytest.raises(SamplingArgumentError, match=r"labels in \[0, 9\], got \[10\]"):
        pipeline.class_labels(plain, np.array([10]))


def test_calibrate_and_quantize_like_pixart(dit):
    """collect() records both CFG halves (labels, then the null class) along the float trajectory, and
    quantize_params(params, batches) needs nothing else: the default recipe keeps DiT's conditioning
    (adaLN-Zero modulations, embedders, final layer) float and quantizes every block linear."""
    model, params, _, shape = dit
    cond = random_conditioning(model, 2, seed=1)
    assert cond["y"].dtype == jnp.int32 and set(np.asarray(cond["y"]).tolist()) <= set(range(10))
    batches = list(collect(model, params, cond, steps=4, every_k_steps=2))
    assert [(b.step, b.timestep) for b in batches] == [(0, 999), (2, 333)]
    assert np.asarray(batches[0].batch["y"]).tolist() == [*np.asarray(cond["y"]).tolist(), 10, 10]
    summary = quantization_summary(quantize_params(params, batches))
    quantized = sorted(p for p, s in summary.items() if s != "float")
    assert quantized == [f"blocks_{i}/{n}" for i in (0, 1) for n in ("attn/proj", "attn/qkv", "mlp/fc1", "mlp/fc2")]

"""Argument validation at the sampling API boundary (vidq_jax.sampling.validate): every bad argument
is a one-line SamplingArgumentError naming it; traced inputs are checked by shape only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax import calibration, pipeline
from vidq_jax import sampling as S
from vidq_jax.errors import VidqError
from vidq_jax.sampling import SamplingArgumentError
from tests.fixture_models import fixture_model

B, H, W, C, L, D = 2, 4, 4, 4, 3, 5
_rng = np.random.default_rng(0)
NOISE = _rng.standard_normal((B, H, W, C)).astype(np.float32)
COND = {"y": _rng.standard_normal((B, L, D)).astype(np.float32), "mask": np.ones((B, L), np.int32)}
UNCOND = {"y": np.zeros((B, L, D), np.float32)}
_W = (0.5 * _rng.standard_normal((D, 2 * C))).astype(np.float32)


def toy_apply(params, x, timestep, y, mask=None, **extra):
    """A cheap bounded 'model' with 2C output channels (learned variance for IDDPM)."""
    del params, mask, extra
    t = jnp.asarray(timestep, jnp.float32)[:, None, None, None] / 1000.0
    return jnp.tanh(jnp.concatenate([x, x], -1) * 0.5 + (y.mean(1) @ _W)[:, None, None, :] * jnp.cos(t))


def run(name="dpm_solver", noise=NOISE, cond=COND, uncond=UNCOND, **kw):
    smp = S.get(name)
    kw.setdefault("steps", 2)
    kw.setdefault("guidance_scale", 3.0)
    return smp.sample(toy_apply, None, noise, cond, uncond, **smp.key_kwargs(jax.random.PRNGKey(0)), **kw)


def raises_one_line(match, fn, *args, **kw):
    with pytest.raises(SamplingArgumentError, match=match) as ei:
        fn(*args, **kw)
    assert "\n" not in str(ei.value) and isinstance(ei.value, (ValueError, VidqError))
    return str(ei.value)


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "3", None])
def test_bad_steps(name, steps):
    raises_one_line(r"^steps must be an integer", run, name, steps=steps)


def test_steps_upper_bounds():
    raises_one_line(r"\[1, 999\], got 1000", S.dpm_solver_schedule, 1000)  # repeated diffusers timesteps
    for name in ("iddpm", "ddim"):
        raises_one_line(r"^steps must be an integer in \[1, 1000\], got 1001", run, name, steps=1001)
    assert S.dpm_solver_schedule(1000, "time_uniform").steps == 1000
    assert S.iddpm_schedule(1000).steps == 1000


@pytest.mark.parametrize("g", [float("nan"), float("inf"), -float("inf"), 1e4, "4.5", None, True])
def test_bad_guidance(g):
    raises_one_line(r"^guidance_scale must be a finite number in \[-1000, 1000\]", run, guidance_scale=g)


@pytest.mark.parametrize("g", [0.0, -2.0, 1.0])
def test_zero_negative_and_unit_guidance_are_allowed(g):
    out = run("rflow", guidance_scale=g, use_timestep_transform=False)
    assert bool(jnp.isfinite(out).all())


def test_bad_noise():
    bad = NOISE.copy()
    bad[0, 1, 2, 3] = np.nan
    raises_one_line(r"^noise holds NaN or Inf", run, noise=bad)
    raises_one_line(r"^noise holds NaN or Inf", run, noise=jnp.asarray(bad).at[1, 0, 0, 0].set(jnp.inf))
    raises_one_line(r"^noise must be a \(B, H, W, C\)", run, noise=NOISE[0])
    raises_one_line(r"^noise must have no empty axis", run, noise=NOISE[:0])
    raises_one_line(r"^noise must be a real array", run, noise=NOISE.astype(np.complex64))


def test_batch_mismatches():
    y3 = np.concatenate([COND["y"], COND["y"][:1]])
    raises_one_line(r"^cond\['y'\] has 3 rows but noise has batch 2", run, cond={**COND, "y": y3})
    raises_one_line(r"^cond\['y'\] has 2 rows but noise has batch 3", run, noise=np.concatenate([NOISE, NOISE[:1]]),
                    uncond={"y": y3 * 0})
    raises_one_line(r"^cond\['mask'\] has 3 rows, which does not divide", run,
                    cond={**COND, "mask": np.ones((3, L), np.int32)})
    raises_one_line(r"^uncond\['y'\] has 1 rows but the matching cond entry has 2", run,
                    uncond={"y": UNCOND["y"][:1]})
    # a mask of a divisor of the batch is the model convention (tiled): accepted
    assert run(cond={**COND, "mask": np.ones((1, L), np.int32)}).shape == NOISE.shape


@pytest.mark.parametrize("key", ["fps", "height", "width", "img_hw", "aspect_ratio"])
def test_sizes_and_rates_must_be_positive(key):
    raises_one_line(rf"^cond\['{key}'\] must be > 0", run, cond={**COND, key: np.array([24.0, 0.0], np.float32)})


def test_non_finite_conditions():
    y = COND["y"].copy()
    y[1, 0, 0] = np.inf
    raises_one_line(r"^cond\['y'\] holds NaN or Inf", run, cond={**COND, "y": y})
    raises_one_line(r"^uncond\['y'\] holds NaN or Inf", run, uncond={"y": y})


def test_rflow_size_keywords():
    kw = dict(use_timestep_transform=True, num_frames=1)
    raises_one_line(r"^height must be a finite number > 0, got 0", run, "rflow", height=0, **kw)
    raises_one_line(r"^width must be a finite number > 0", run, "rflow", width=float("nan"), **kw)
    raises_one_line(r"^num_frames must be an integer >= 1, got 0", run, "rflow", num_frames=0)
    raises_one_line(r"^num_frames must be 1 \(an image\) or >= 17", run, "rflow", num_frames=5)
    raises_one_line(r"^ratio must be a finite number > 0", run, "rflow", ratio=-1.0)


def test_other_sampler_keywords():
    raises_one_line(r"^cfg_channels must be an integer in \[1, 4\], got 5", run, "iddpm", cfg_channels=5)
    raises_one_line(r"^eta must be a finite number >= 0", run, "ddim", eta=-0.5)
    raises_one_line(r"^discretization must be", run, discretization="karras")


def test_traced_inputs_are_checked_by_shape_only():
    """Under jit the values are unknown: no Python branch on them (a NaN inside jit is not caught, a
    traced guidance scale runs CFG), shapes are still checked."""

    @jax.jit
    def f(noise, g):
        return S.sample_rflow(toy_apply, None, noise, COND, UNCOND, steps=2, guidance_scale=g,
                              use_timestep_transform=False)

    eager = S.sample_rflow(toy_apply, None, NOISE, COND, UNCOND, steps=2, guidance_scale=3.0,
                           use_timestep_transform=False)
    np.testing.assert_allclose(np.asarray(f(NOISE, 3.0)), np.asarray(eager), rtol=1e-5, atol=1e-6)
    assert not bool(jnp.isfinite(f(jnp.full_like(NOISE, jnp.nan), 3.0)).any())
    with pytest.raises(SamplingArgumentError, match="noise must be"):
        jax.jit(lambda n: S.sample_rflow(toy_apply, None, n, COND, None, steps=2))(NOISE[0])
    with pytest.raises(SamplingArgumentError, match="noise must be"):
        jax.jit(lambda n: S.sample_dpm_solver(toy_apply, None, n, COND, None, steps=2))(NOISE[0])


def test_pipeline_and_calibration_boundaries():
    model, params, cond, shape = fixture_model("pixart_alpha_ms")
    noise = np.zeros(shape, np.float32)
    raises_one_line(r"^steps must be an integer >= 1, got 0", pipeline.sample, model, params, noise, cond, steps=0)
    raises_one_line(r"^guidance_scale must be", pipeline.sample, model, params, noise, cond, guidance_scale=np.nan)
    raises_one_line(r"^cond must hold the caption features 'y'", pipeline.sample, model, params, noise,
                    {"mask": cond["mask"]})
    for kw, match in [(dict(steps=0), r"^steps must be"), (dict(steps=2, first_step=2), r"^first_step must be an "
                      r"integer in \[0, 1\], got 2"), (dict(num_prompts=3), r"^num_prompts must be an integer in "
                      r"\[1, 2\]"), (dict(latent_shape=(8, 0, 4)), r"^each entry of latent_shape must be"),
                      (dict(every_k_steps=0), r"^every_k_steps must be")]:
        raises_one_line(match, lambda: next(calibration.collect(model, params, cond, **kw)))

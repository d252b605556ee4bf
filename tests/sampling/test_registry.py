"""The sampler registry (vidq_jax.sampling.SAMPLERS / get): each sampler owns its model timesteps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax import sampling as S

KEY = jax.random.PRNGKey(0)
IMAGE = (2, 4, 4, 4)  # (B, H, W, C)
VIDEO = (2, 5, 4, 4, 4)  # (B, T, H, W, C): 5 latent frames = 17 pixel frames for the rflow shift

# (sampler, sample keywords, latent shape); every registered sampler needs at least one case
CASES = [
    ("dpm_solver", {}, IMAGE),
    ("dpm_solver", {"discretization": "time_uniform"}, IMAGE),
    ("iddpm", {"key": KEY}, VIDEO),
    ("ddim", {}, VIDEO),
    ("ddim", {"eta": 0.5, "key": KEY}, VIDEO),
    ("rflow", {}, VIDEO),
    ("rflow", {"height": 240, "width": 426, "num_frames": 51}, IMAGE),
    ("rflow", {"ratio": 2.5}, IMAGE),
    ("rflow", {"use_timestep_transform": False}, VIDEO),
]


def test_every_registered_sampler_has_a_case():
    assert {c[0] for c in CASES} == set(S.SAMPLERS)
    assert all(S.get(name).name == name for name in S.SAMPLERS)


@pytest.mark.parametrize("steps", [3, 8])
@pytest.mark.parametrize("name,kw,shape", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_timesteps_are_the_ones_sample_feeds_the_model(name, kw, shape, steps):
    seen: list[np.ndarray] = []

    def apply_fn(params, x, t, y):  # a fresh function: its own compiled loop, its own record
        jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), t, ordered=True)
        return jnp.zeros((*x.shape[:-1], 2 * x.shape[-1]), x.dtype) + params["b"] + 0.0 * y.mean()

    smp = S.get(name)
    noise = jax.random.normal(jax.random.PRNGKey(1), shape)
    cond, uncond = {"y": jnp.ones((shape[0], 3, 2))}, {"y": jnp.zeros((shape[0], 3, 2))}
    out = smp.sample(apply_fn, {"b": jnp.float32(0.1)}, noise, cond, uncond, steps=steps, guidance_scale=3.0, **kw)
    jax.block_until_ready(out)
    jax.effects_barrier()
    ts = smp.timesteps(steps, shape, **kw)
    assert len(seen) == steps
    fed = np.stack(seen)
    assert fed.shape == (steps, 2 * shape[0])  # both CFG halves at the same timestep
    np.testing.assert_array_equal(fed, np.broadcast_to(ts[:, None], fed.shape))
    assert fed.dtype.kind == ts.dtype.kind  # int schedules stay int, float ones float


def test_timesteps_match_the_schedules():
    np.testing.assert_array_equal(S.get("dpm_solver").timesteps(20, IMAGE), S.diffusers_dpm_timesteps(20))
    np.testing.assert_array_equal(S.get("iddpm").timesteps(20, VIDEO), S.get("ddim").timesteps(20, IMAGE))
    np.testing.assert_array_equal(S.get("iddpm").timesteps(20, VIDEO),
                                  S.space_timesteps(1000, 20)[::-1])
    r = S.rflow_time_ratio(240, 426, 51)
    np.testing.assert_array_equal(S.get("rflow").timesteps(30, IMAGE, height=240, width=426, num_frames=51),
                                  S.rflow_schedule(30, r).timesteps)


def test_get_and_keys():
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'; choose one of \['ddim', 'dpm_solver', 'iddpm', "
                                         r"'rflow'\]"):
        S.get("euler")
    flags = {n: (s.needs_key, s.accepts_key) for n, s in S.SAMPLERS.items()}
    assert flags == {"dpm_solver": (False, False), "iddpm": (True, True), "ddim": (False, True),
                     "rflow": (False, False)}
    with pytest.raises(ValueError, match="the IDDPM sampler needs a PRNG key"):
        S.get("iddpm").key_kwargs(None)
    assert S.get("ddim").key_kwargs(KEY)["key"] is KEY and S.get("ddim").key_kwargs(None) == {}
    assert S.get("rflow").key_kwargs(KEY) == {}
    assert {"discretization", "steps", "guidance_scale", "return_trajectory"} <= S.get("dpm_solver").keywords
    assert "apply_fn" not in S.get("dpm_solver").keywords


def test_timesteps_rejects_keywords_the_sampler_lacks():
    with pytest.raises(TypeError, match=r"takes no keyword\(s\) \['discretization'\]"):
        S.get("rflow").timesteps(5, IMAGE, discretization="diffusers")


def test_sampler_timestep_keywords_come_from_sample():
    def sample(apply_fn, params, noise, cond, uncond=None, *, steps=4, flavour="a"):
        raise NotImplementedError

    S.Sampler("ok", "OK", sample, lambda steps, noise_shape, *, flavour: np.arange(steps))
    with pytest.raises(TypeError, match="'colour' is not a keyword of its sample"):
        S.Sampler("bad", "Bad", sample, lambda steps, noise_shape, *, colour: np.arange(steps))
    with pytest.raises(TypeError, match="'flavour' must take its default from sample"):
        S.Sampler("bad", "Bad", sample, lambda steps, noise_shape, *, flavour="b": np.arange(steps))

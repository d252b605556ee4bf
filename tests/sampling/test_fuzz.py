"""Hypothesis fuzzing of the sampler arguments: any (sampler, steps, guidance, noise with NaN, batch
mismatch) either samples to a finite result or raises a one-line ValueError (SamplingArgumentError)
naming the argument; a valid combination always samples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidq_jax import sampling as S
from vidq_jax.sampling import SamplingArgumentError
from vidq_jax.sampling.validate import MAX_GUIDANCE
from tests.sampling.test_validation import COND, NOISE, UNCOND, toy_apply

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

BAD_STEPS = st.one_of(st.integers(max_value=0), st.sampled_from([2.5, True, None, "2"]))
TOO_MANY_STEPS = st.integers(1001, 10**9)  # the discrete-time samplers' limit (rectified flow has none)
BAD_GUIDANCE = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf, None, "7", True]),
                         st.floats(min_value=MAX_GUIDANCE, exclude_min=True),
                         st.floats(max_value=-MAX_GUIDANCE, exclude_max=True))
# which argument is broken (None: all valid) -> the word the one-line message must start with
BROKEN = {None: None, "steps": "steps", "guidance": "guidance_scale", "nan_noise": "noise", "y": "cond['y']",
          "uncond": "uncond['y']", "mask": "cond['mask']"}


@FUZZ
@given(name=st.sampled_from(sorted(S.SAMPLERS)), broken=st.sampled_from([None, None, None, *BROKEN]), data=st.data(),
       steps=st.integers(1, 3), guidance=st.floats(-MAX_GUIDANCE, MAX_GUIDANCE))
def test_sampler_arguments(name, broken, data, steps, guidance):
    noise = NOISE.copy()
    cond, uncond = dict(COND), dict(UNCOND)
    if broken == "steps":
        steps = data.draw(BAD_STEPS if name == "rflow" else st.one_of(BAD_STEPS, TOO_MANY_STEPS), "bad steps")
    elif broken == "guidance":
        guidance = data.draw(BAD_GUIDANCE, "bad guidance")
    elif broken == "nan_noise":
        noise[data.draw(st.integers(0, 1))] = np.nan
    elif broken == "y":
        cond["y"] = np.concatenate([cond["y"], cond["y"][:1]])
    elif broken == "uncond":
        uncond["y"] = uncond["y"][:1]
    elif broken == "mask":
        cond["mask"] = np.ones((3, cond["mask"].shape[1]), np.int32)
    smp = S.get(name)
    extra = {"use_timestep_transform": False} if name == "rflow" else {}
    try:
        out = smp.sample(toy_apply, None, noise, cond, uncond, steps=steps, guidance_scale=guidance,
                         **smp.key_kwargs(jax.random.PRNGKey(0)), **extra)
    except SamplingArgumentError as e:
        msg = str(e)
        assert broken is not None, f"valid input refused: {msg}"
        assert isinstance(e, ValueError) and "\n" not in msg and msg.startswith(BROKEN[broken]), msg
        return
    assert broken is None, f"invalid {broken} accepted"
    assert out.shape == noise.shape and bool(jnp.isfinite(out).all())

"""Samplers for the PixArt / Open-Sora diffusion transformers, with classifier-free guidance.

Three families, each reproducing the inference path of the original release:

* :func:`sample_dpm_solver` -- DPM-Solver++ (2M, multistep, order 2) on the discrete VP schedule
  (linear betas 1e-4 -> 0.02 over 1000 steps), epsilon prediction. Two time discretisations:
  ``"diffusers"`` reproduces diffusers' ``DPMSolverMultistepScheduler`` with its default config
  (``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``timestep_spacing="linspace"``,
  ``lower_order_final=True``, ``final_sigmas_type="zero"``), as used by ``PixArt{Alpha,Sigma}Pipeline``;
  ``"time_uniform"`` reproduces the original PixArt / DPM-Solver code (``DPM_Solver.sample(order=2,
  skip_type="time_uniform", method="multistep")``, used by PixArt's ``scripts/inference.py`` and
  ViDiT-Q's old code).
* :func:`sample_iddpm` / :func:`sample_ddim` -- improved-DDPM ancestral sampling (learned-range
  variance) and DDIM on the respaced linear schedule, as Open-Sora 1.0's ``IDDPM`` scheduler,
  including its classifier-free-guidance channel quirk.
* :func:`sample_rflow` -- Open-Sora 1.2 rectified flow (Euler, optional resolution/length dependent
  timestep transform).

Conventions (see ``DESIGN.md``, "Sampler convention" and "Model call convention"):

* ``apply_fn(params, x, timestep, **cond) -> out``: channels-last output whose first ``C`` channels
  (``C = noise.shape[-1]``) are the prediction (epsilon or velocity); further channels (learned
  variance) are only used by :func:`sample_iddpm`.
* ``cond`` / ``uncond``: dicts of keyword inputs of the model (``y``, ``mask``, extras such as
  ``fps``, ``height``, ``width``, ``img_hw``, ``aspect_ratio``). With guidance, both are run as ONE
  batch of ``2B`` rows, conditional rows first: every array leaf with a batch axis is concatenated
  along axis 0 (``[cond; uncond]``). A key missing from ``uncond`` reuses the conditional value (e.g.
  the text mask, which PixArt / Open-Sora reuse for the null caption). ``None`` leaves stay ``None``;
  non-array leaves (python scalars, strings) and 0-d arrays are shared by both halves and passed
  unchanged. ``guidance_scale == 1`` or ``uncond is None`` runs a single conditional batch.
* ``params`` is an arbitrary pytree (e.g. holding quantized weight records); it is only passed to
  ``apply_fn``. Array leaves are traced, non-array leaves are treated as static (they must be
  hashable) and handed back unchanged.
* The whole sampling loop is one ``lax.scan`` inside ``jax.jit``; the model is traced once, whatever
  the number of steps. The compiled loop is cached on the identity of ``apply_fn`` (a static jit
  argument): create ``apply_fn`` once and reuse it.
* ``return_trajectory=True`` returns ``(x_final, trajectory)`` with ``trajectory[i]`` the latent after
  step ``i`` (shape ``(steps, *noise.shape)``; ``trajectory[-1] == x_final``).
* ``step_kwarg="step"`` adds ``step=i`` (int32 scalar, ``i = 0..steps-1`` in sampling order) to every
  model call (for per-timestep-segment weights).

* Arguments are validated at this boundary (:mod:`.validate`, which lists the allowed ranges):
  ``steps`` >= 1, a finite ``guidance_scale`` (negative allowed), a finite rank-4/5 ``noise``,
  conditions whose rows match the noise batch; a violation is a one-line
  :class:`SamplingArgumentError` (a ``ValueError``) naming the argument. Values are checked on
  concrete arrays only; traced inputs (under ``jax.jit``) are checked by shape.

* The sampler state runs in float32 (a lower-precision ``noise`` is upcast); the model output is
  cast to it.

The schedule helpers (``*_timesteps``, ``*_schedule``) are public, return numpy arrays and are
computed on the host; the per-step tables are passed into the jitted loop as arrays, so only the
number of steps (a shape) and the static inputs trigger recompilation.

Not reproduced: Open-Sora 1.2's frame-conditioning ``mask`` / ``x_mask`` (image/video-to-video
reference frames; with no references it is all ones and has no effect) and the release's torch RNG
streams (noise comes from JAX keys).

Layout: one module per sampler family (:mod:`.dpm_solver`, :mod:`.gaussian`, :mod:`.rflow`), the
shared discrete VP schedule (:mod:`.vp`), the CFG plumbing (:mod:`.cfg`) and the one jitted loop
(:mod:`.loop`). Each family module declares a :class:`Sampler` (its ``sample`` function and the
model timesteps that function feeds the model, :meth:`Sampler.timesteps`); :data:`SAMPLERS` below
is the registry (``get(name)``) that the pipeline and calibration read. Adding a sampler = one
module whose ``sample_*`` runs :func:`.loop.run_sampler` with an update rule, one :class:`Sampler`
there, and one entry in :data:`SAMPLERS`.
"""

from __future__ import annotations

from vidq_jax.sampling import dpm_solver, gaussian, rflow
from vidq_jax.sampling.cfg import ApplyFn, combine_cfg_inputs
from vidq_jax.sampling.dpm_solver import (
    DPMSolverSchedule,
    diffusers_dpm_timesteps,
    dpm_solver_schedule,
    sample_dpm_solver,
    time_uniform_timesteps,
)
from vidq_jax.sampling.gaussian import (
    GaussianDiffusionSchedule,
    gaussian_diffusion_schedule,
    iddpm_schedule,
    sample_ddim,
    sample_iddpm,
    space_timesteps,
)
from vidq_jax.sampling.loop import step_noise
from vidq_jax.sampling.rflow import (
    RFlowSchedule,
    num_frames_equivalent,
    rflow_schedule,
    rflow_size_from_latent,
    rflow_time_ratio,
    rflow_timesteps,
    sample_rflow,
    timestep_transform,
)
from vidq_jax.sampling.sampler import Sampler
from vidq_jax.sampling.validate import SamplingArgumentError
from vidq_jax.sampling.vp import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, diffusers_alphas_cumprod, linear_betas

__all__ = [
    "SAMPLERS",
    "Sampler",
    "SamplingArgumentError",
    "get",
    "ApplyFn",
    "NUM_TRAIN_TIMESTEPS",
    "BETA_START",
    "BETA_END",
    "DPMSolverSchedule",
    "GaussianDiffusionSchedule",
    "RFlowSchedule",
    "linear_betas",
    "diffusers_alphas_cumprod",
    "diffusers_dpm_timesteps",
    "time_uniform_timesteps",
    "dpm_solver_schedule",
    "space_timesteps",
    "gaussian_diffusion_schedule",
    "iddpm_schedule",
    "num_frames_equivalent",
    "rflow_time_ratio",
    "rflow_size_from_latent",
    "timestep_transform",
    "rflow_timesteps",
    "rflow_schedule",
    "combine_cfg_inputs",
    "step_noise",
    "sample_dpm_solver",
    "sample_iddpm",
    "sample_ddim",
    "sample_rflow",
]

SAMPLERS: dict[str, Sampler] = {
    s.name: s for s in (dpm_solver.SAMPLER, gaussian.IDDPM, gaussian.DDIM, rflow.SAMPLER)
}
"""The registered samplers by name (the ``sampler`` of the pipeline settings and ``model.json``)."""


def get(name: str) -> Sampler:
    """The registered :class:`Sampler` called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None

"""Gaussian diffusion on the respaced linear schedule, as Open-Sora 1.0's ``IDDPM`` scheduler:
improved-DDPM ancestral sampling with learned-range variance (:func:`sample_iddpm`) and DDIM
(:func:`sample_ddim`), both with the release's classifier-free-guidance channel quirk.

Open-Sora 1.0 copied this diffusion code from facebookresearch/DiT, so the same two functions are also
DiT's release sampling: ``sample.py`` runs ``create_diffusion("250")`` (linear betas 1e-4 → 0.02 over 1000
steps, learned range, even respacing) with ``p_sample_loop`` and ``forward_with_cfg`` at cfg 4.0, and the
DDIM variants (50 / 100 steps, as Q-DiT calibrates and evaluates) respace the same way. DiT's
``forward_with_cfg`` is where the channel quirk comes from: it guides only ``eps[:, :3]`` of the 4 latent
channels "for exact reproducibility", takes ``eps[:, 3]`` and the variance channels from each half, and
evaluates both halves on the conditional half's latent, so only the conditional trajectory matters
(what is tracked here)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.sampling.cfg import ApplyFn, Cond
from vidq_jax.sampling.loop import ModelFn, Tables, run_sampler, step_noise
from vidq_jax.sampling.sampler import Sampler
from vidq_jax.sampling.validate import SamplingArgumentError, check_steps
from vidq_jax.sampling.vp import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, linear_betas

__all__ = ["DDIM", "GaussianDiffusionSchedule", "IDDPM", "gaussian_diffusion_schedule", "iddpm_schedule",
           "sample_ddim", "sample_iddpm", "space_timesteps"]


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """improved-diffusion's ``space_timesteps`` (sorted list of kept original timesteps).

    ``section_counts`` is an int, a comma-separated string ("100", "10,15,20") or a list: the
    original steps are split into equal sections and each section is strided with a fractional
    stride, rounding with Python's ``round``. ``"ddimN"`` uses an integer stride (DDIM paper).
    E.g. ``space_timesteps(1000, 20) = [0, 53, 105, ..., 946, 999]``.
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    counts = [int(c) for c in section_counts]
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


@dataclasses.dataclass(frozen=True)
class GaussianDiffusionSchedule:
    """improved-diffusion ``GaussianDiffusion`` tables (float64) of a (respaced) schedule.

    Index ``i`` is the respaced step (``0..steps-1``); ``timestep_map[i]`` is the original timestep
    fed to the model. Sampling runs ``i = steps-1, ..., 0``.
    """

    timestep_map: np.ndarray  # (steps,) int64
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.timestep_map.shape[0])

    @property
    def log_betas(self) -> np.ndarray:
        """Upper end of the learned-range log variance, ``log(beta_t)``."""
        return np.log(self.betas)


def gaussian_diffusion_schedule(
    betas: np.ndarray, use_timesteps: Iterable[int] | None = None
) -> GaussianDiffusionSchedule:
    """``SpacedDiffusion`` tables: keep ``use_timesteps`` of the base ``betas`` (all if ``None``),
    with respaced betas ``1 - abar_k / abar_{k_prev}``, then the ``GaussianDiffusion`` quantities."""
    betas = np.asarray(betas, dtype=np.float64)
    base_abar = np.cumprod(1.0 - betas)
    if use_timesteps is None:
        kept = list(range(len(betas)))
    else:
        kept = sorted(set(int(t) for t in use_timesteps))
    new_betas = []
    last = 1.0
    for i in kept:
        new_betas.append(1.0 - base_abar[i] / last)
        last = base_abar[i]
    b = np.array(new_betas, dtype=np.float64)
    abar = np.cumprod(1.0 - b)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = b * (1.0 - abar_prev) / (1.0 - abar)
    if len(b) > 1:  # the first posterior variance is 0: replaced by the second one ("clipped")
        post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    else:  # single step (never noised, the value is unused); the original would fail here
        post_logvar = np.log(np.maximum(post_var, 1e-20))
    return GaussianDiffusionSchedule(
        timestep_map=np.array(kept, dtype=np.int64),
        betas=b,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_logvar,
        posterior_mean_coef1=b * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(1.0 - b) / (1.0 - abar),
    )


def iddpm_schedule(steps: int = 100, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> GaussianDiffusionSchedule:
    """Open-Sora 1.0 ``IDDPM(num_sampling_steps=steps)``: linear betas (1e-4 -> 0.02 for 1000 steps,
    both ends scaled by 1000/N as improved-diffusion does) respaced with ``space_timesteps(N, str(steps))``."""
    steps = check_steps(steps, maximum=num_train_timesteps)
    scale = 1000.0 / num_train_timesteps
    betas = linear_betas(num_train_timesteps, scale * BETA_START, scale * BETA_END)
    return gaussian_diffusion_schedule(betas, space_timesteps(num_train_timesteps, str(steps)))

# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


def _iddpm_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """improved-diffusion ``p_sample`` with LEARNED_RANGE variance and epsilon prediction."""
    (x,) = carry
    c = x.shape[-1]
    out = model(x, tab["timestep"], tab["step"])
    if out.shape[-1] < 2 * c:
        raise ValueError(f"IDDPM (learned-range variance) needs {2 * c} output channels, got {out.shape[-1]}")
    eps, var_values = out[..., :c], out[..., c : 2 * c]
    x0 = jnp.clip(tab["sqrt_recip_abar"] * x - tab["sqrt_recipm1_abar"] * eps, -tab["clip"], tab["clip"])
    mean = tab["coef1"] * x0 + tab["coef2"] * x
    frac = (var_values + 1.0) / 2.0
    log_var = frac * tab["max_log"] + (1.0 - frac) * tab["min_log"]
    z = step_noise(key, tab["step"], x.shape, x.dtype)
    return (mean + tab["nonzero"] * jnp.exp(0.5 * log_var) * z,)


def _ddim_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """improved-diffusion ``ddim_sample`` (noise only when a key is given, i.e. eta > 0)."""
    (x,) = carry
    eps = model(x, tab["timestep"], tab["step"])[..., : x.shape[-1]]
    x0 = jnp.clip(tab["sqrt_recip_abar"] * x - tab["sqrt_recipm1_abar"] * eps, -tab["clip"], tab["clip"])
    eps = (tab["sqrt_recip_abar"] * x - x0) / tab["sqrt_recipm1_abar"]
    x_next = tab["sqrt_abar_prev"] * x0 + tab["eps_coef"] * eps
    if key is not None:
        x_next = x_next + tab["sigma"] * step_noise(key, tab["step"], x.shape, x.dtype)
    return (x_next,)


def _gaussian_tables(sched: GaussianDiffusionSchedule, clip_denoised: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Respaced indices in sampling order (``N-1 .. 0``) and the tables shared by IDDPM and DDIM."""
    order = np.arange(sched.steps)[::-1]
    tables = {
        "sqrt_recip_abar": sched.sqrt_recip_alphas_cumprod[order],
        "sqrt_recipm1_abar": sched.sqrt_recipm1_alphas_cumprod[order],
        "nonzero": (order != 0).astype(np.float64),
        "clip": np.full(sched.steps, 1.0 if clip_denoised else np.inf),
    }
    return order, tables


def sample_iddpm(
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None = None,
    *,
    key: jax.Array,
    steps: int = 100,
    guidance_scale: float = 7.0,
    cfg_channels: int | None = 3,
    clip_denoised: bool = False,
    return_trajectory: bool = False,
    step_kwarg: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Open-Sora 1.0 IDDPM ancestral sampling (``p_sample_loop``), see :func:`iddpm_schedule`.

    Upstream Open-Sora 1.0 uses 100 steps and cfg 7.0; ViDiT-Q's quantization config 100 steps, cfg
    4.0, and its 20-step config cfg 7.0. Per step (respaced index ``i``, model timestep
    ``timestep_map[i]`` as int32): ``eps = out[..., :C]``, learned-range log variance
    ``frac*log(beta_i) + (1-frac)*posterior_log_variance_clipped_i`` with
    ``frac = (out[..., C:2C] + 1) / 2``, ``x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps`` (clipped to
    [-1, 1] only if ``clip_denoised``; Open-Sora passes False), posterior mean, plus
    ``exp(0.5 log_var) * noise`` except at ``i = 0``. Noise of step ``k`` is
    ``step_noise(key, k, noise.shape)``.

    Guidance follows the release's ``forward_with_cfg``: ``u + s (c - u)`` only on the first
    ``cfg_channels`` output channels (3, DiT's reproducibility quirk; ``None`` = all ``C``), the
    other epsilon channels and the variance channels come unguided from the conditional half (the
    release duplicates the guided result for both halves and keeps only the conditional half's
    latent, which is what is tracked here).
    """
    sched = iddpm_schedule(steps)
    order, tables = _gaussian_tables(sched, clip_denoised)
    tables |= {
        "coef1": sched.posterior_mean_coef1[order],
        "coef2": sched.posterior_mean_coef2[order],
        "min_log": sched.posterior_log_variance_clipped[order],
        "max_log": sched.log_betas[order],
    }
    return run_sampler(_iddpm_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                       cfg_channels=cfg_channels, step_kwarg=step_kwarg, timesteps=sched.timestep_map[order],
                       timestep_dtype=jnp.int32, tables=tables, key=key, with_aux=False,
                       return_trajectory=return_trajectory)


def sample_ddim(
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None = None,
    *,
    steps: int = 100,
    guidance_scale: float = 7.0,
    eta: float = 0.0,
    key: jax.Array | None = None,
    cfg_channels: int | None = 3,
    clip_denoised: bool = False,
    return_trajectory: bool = False,
    step_kwarg: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """improved-diffusion ``ddim_sample_loop`` on the same respaced schedule as :func:`sample_iddpm`
    (same model timesteps and the same guidance quirk), for comparison.

    ``x0 = sqrt(1/abar) x - sqrt(1/abar-1) eps``; ``eps' = (sqrt(1/abar) x - x0) / sqrt(1/abar-1)``;
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps' + sigma z`` with
    ``sigma = eta sqrt((1-abar_prev)/(1-abar)) sqrt(1 - abar/abar_prev)`` (no noise at the last step).
    ``eta = 0`` (default) is deterministic and needs no ``key``.
    """
    if isinstance(eta, bool) or not (isinstance(eta, (int, float, np.number)) and 0.0 <= float(eta) < math.inf):
        raise SamplingArgumentError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta != 0.0 and key is None:
        raise SamplingArgumentError("sample_ddim with eta > 0 needs a PRNG key")
    sched = iddpm_schedule(steps)
    order, tables = _gaussian_tables(sched, clip_denoised)
    abar, abar_prev = sched.alphas_cumprod[order], sched.alphas_cumprod_prev[order]
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
    tables |= {
        "sqrt_abar_prev": np.sqrt(abar_prev),
        "eps_coef": np.sqrt(1.0 - abar_prev - sigma**2),
        "sigma": sigma * tables["nonzero"],
    }
    return run_sampler(_ddim_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                       cfg_channels=cfg_channels, step_kwarg=step_kwarg, timesteps=sched.timestep_map[order],
                       timestep_dtype=jnp.int32, tables=tables, key=key if eta != 0.0 else None, with_aux=False,
                       return_trajectory=return_trajectory)


def _model_timesteps(steps: int, noise_shape: tuple[int, ...]) -> np.ndarray:
    """Model timesteps of :func:`sample_iddpm` and :func:`sample_ddim`: the respaced schedule's
    ``timestep_map`` in sampling order (the latent shape does not matter)."""
    del noise_shape
    return iddpm_schedule(steps).timestep_map[::-1]


IDDPM = Sampler("iddpm", "IDDPM", sample_iddpm, _model_timesteps)
DDIM = Sampler("ddim", "DDIM", sample_ddim, _model_timesteps)

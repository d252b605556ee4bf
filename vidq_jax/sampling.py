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

* The sampler state runs in float32 (a lower-precision ``noise`` is upcast); the model output is
  cast to it.

The schedule helpers (``*_timesteps``, ``*_schedule``) are public, return numpy arrays and are
computed on the host; the per-step tables are passed into the jitted loop as arrays, so only the
number of steps (a shape) and the static inputs trigger recompilation.

Not reproduced: Open-Sora 1.2's frame-conditioning ``mask`` / ``x_mask`` (image/video-to-video
reference frames; with no references it is all ones and has no effect) and the release's torch RNG
streams (noise comes from JAX keys).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ApplyFn",
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

ApplyFn = Callable[..., jax.Array]
"""``apply_fn(params, x, timestep, **cond) -> out`` (channels-last, prediction in ``[..., :C]``)."""

Cond = Mapping[str, Any]

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


# --------------------------------------------------------------------------------------------------
# Discrete VP schedule
# --------------------------------------------------------------------------------------------------


def linear_betas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> np.ndarray:
    """Linear beta schedule in float64, ``np.linspace(beta_start, beta_end, N)``.

    This is improved-diffusion's ``get_named_beta_schedule("linear", N)`` for ``N = 1000`` (it scales
    both ends by ``1000 / N``; pass scaled values for other ``N``), used by Open-Sora's IDDPM and by
    PixArt's DPM-Solver wrapper.
    """
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """Bit-exact numpy twin of ``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU.

    PyTorch computes a float32 step and fills the first half forwards from ``start`` and the second
    half backwards from ``end`` (the products rounded once to float32; verified bit-exact for the
    schedules used here).
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps, dtype=np.float64)
    fwd = np.float64(start32) + step * idx
    bwd = np.float64(end32) - step * (steps - 1 - idx)
    return np.where(idx < steps // 2, fwd, bwd).astype(np.float32)


def diffusers_alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> np.ndarray:
    """``alphas_cumprod`` exactly as diffusers builds it (float32 ``torch.linspace`` betas, cumprod
    accumulated in float64 and stored in float32, as torch's CPU kernel does)."""
    betas = _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    alphas = np.float32(1.0) - betas
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, order 2)
# --------------------------------------------------------------------------------------------------


def diffusers_dpm_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Discrete model timesteps of diffusers' ``DPMSolverMultistepScheduler.set_timesteps`` with
    ``timestep_spacing="linspace"`` (default): ``linspace(0, N-1, steps+1).round()[::-1][:-1]``.

    E.g. 20 steps -> ``[999, 949, ..., 100, 50]`` (int64, decreasing). ``lambda_min_clipped`` is
    ``-inf`` by default, so no timestep is clipped.
    """
    grid = np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1]
    return grid.copy().astype(np.int64)


def time_uniform_timesteps(
    steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous times of the original DPM-Solver "time_uniform" grid for a discrete-time DPM.

    Returns ``(t_cont, t_model)``: ``t_cont = linspace(1, 1/N, steps+1)`` (float32, as
    ``torch.linspace``; ``T = 1`` and ``t_0 = 1/N``) and the model time input of the evaluated points
    ``t_model = (t_cont[:-1] - 1/N) * 1000`` (float32, fractional), as ``model_wrapper`` computes it.
    """
    t_cont = _torch_linspace_f32(1.0, 1.0 / num_train_timesteps, steps + 1)
    t_model = ((t_cont[:-1].astype(np.float64) - 1.0 / num_train_timesteps) * 1000.0).astype(np.float32)
    return t_cont, t_model


@dataclasses.dataclass(frozen=True)
class DPMSolverSchedule:
    """Per-step tables of a multistep DPM-Solver++ run (``steps`` model evaluations).

    Step ``i`` evaluates the model at ``model_timesteps[i]`` on ``x_i`` (at noise level
    ``alpha[i], sigma[i]``), forms the data prediction ``x0_i = (x_i - sigma[i] * eps_i) / alpha[i]``
    and updates ``x_{i+1} = coef_x[i] * x_i + coef_x0[i] * x0_i + coef_d[i] * (x0_i - x0_{i-1})``.
    ``coef_d`` is zero for first-order steps.
    """

    model_timesteps: np.ndarray  # (steps,) int64 (diffusers) or float32 (time_uniform)
    alpha: np.ndarray  # (steps + 1,) float64
    sigma: np.ndarray  # (steps + 1,) float64 (may end with 0)
    orders: np.ndarray  # (steps,) int
    coef_x: np.ndarray  # (steps,) float64
    coef_x0: np.ndarray  # (steps,) float64
    coef_d: np.ndarray  # (steps,) float64

    @property
    def steps(self) -> int:
        return int(self.model_timesteps.shape[0])


def _discrete_log_alpha(betas: np.ndarray) -> np.ndarray:
    """``log(alpha_n) = 0.5 * cumsum(log(1 - beta))`` with DPM-Solver's lambda clipping at -5.1
    (a no-op for the linear schedule, whose smallest lambda is about -5.07)."""
    log_alpha = 0.5 * np.cumsum(np.log(1.0 - betas))
    lambdas = log_alpha - 0.5 * np.log(1.0 - np.exp(2.0 * log_alpha))
    n_clip = int(np.searchsorted(lambdas[::-1], -5.1))
    return log_alpha[: len(log_alpha) - n_clip] if n_clip > 0 else log_alpha


def _multistep_coefficients(
    alpha: np.ndarray, sigma: np.ndarray, orders: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DPM-Solver++ multistep update coefficients (midpoint / 'dpmsolver' second-order form).

    first order:  x_t = (s_t/s_s) x - a_t expm1(-h) x0_s
    second order: x_t = ... - 0.5 a_t expm1(-h) (1/r0) (x0_s - x0_prev),  r0 = h_prev / h
    with h = lambda_t - lambda_s. A final ``sigma = 0`` gives lambda = inf, i.e. ``x_t = x0_s``.
    """
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf where sigma == 0
    steps = len(orders)
    coef_x = np.zeros(steps)
    coef_x0 = np.zeros(steps)
    coef_d = np.zeros(steps)
    for i in range(steps):
        h = lam[i + 1] - lam[i]
        phi_1 = np.expm1(-h)  # -1 when h is inf
        coef_x[i] = sigma[i + 1] / sigma[i]
        coef_x0[i] = -alpha[i + 1] * phi_1
        if orders[i] == 2:
            if i == 0:
                raise ValueError("a second-order multistep update needs a previous model output")
            r0 = (lam[i] - lam[i - 1]) / h
            coef_d[i] = -0.5 * alpha[i + 1] * phi_1 / r0
    return coef_x, coef_x0, coef_d


def dpm_solver_schedule(
    steps: int = 20,
    discretization: Literal["diffusers", "time_uniform"] = "diffusers",
    *,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> DPMSolverSchedule:
    """Tables of DPM-Solver++(2M) on the discrete linear VP schedule.

    ``"diffusers"``: ``DPMSolverMultistepScheduler`` defaults. sigma_n = sqrt((1-abar_n)/abar_n) at
    the integer timesteps of :func:`diffusers_dpm_timesteps` plus a final 0 (``final_sigmas_type=
    "zero"``); alpha_t = 1/sqrt(1+sigma^2), sigma_t = sigma*alpha_t. Orders: first step 1 (no history),
    last step 1 (``final_sigmas_type="zero"`` forces it), 2 otherwise. The last step returns the data
    prediction ``x0`` (fully denoised).

    ``"time_uniform"``: original DPM-Solver with ``NoiseScheduleVP("discrete")``: log(alpha_t) is the
    piecewise-linear interpolation of ``0.5*cumsum(log(1-beta))`` over t_n = (n+1)/N; times from
    :func:`time_uniform_timesteps` (T = 1 down to t_0 = 1/N, which is not zero: the result is
    ``x`` at t_0, sigma ~ 0.01). Orders: first step 1, then 2; with ``steps < 10`` the last step is
    first order (``lower_order_final``). Model time input (t - 1/N)*1000 (float).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if discretization == "diffusers":
        abar = diffusers_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        sig_table = np.sqrt((np.float32(1.0) - abar) / abar).astype(np.float32)
        timesteps = diffusers_dpm_timesteps(steps, num_train_timesteps)
        sig = np.concatenate([sig_table[timesteps], [0.0]]).astype(np.float32).astype(np.float64)
        alpha = 1.0 / np.sqrt(sig**2 + 1.0)
        sigma = sig * alpha
        orders = np.full(steps, 2)
        orders[0] = 1
        orders[-1] = 1
        model_timesteps = timesteps
    elif discretization == "time_uniform":
        t_cont, model_timesteps = time_uniform_timesteps(steps, num_train_timesteps)
        betas = linear_betas(num_train_timesteps, beta_start, beta_end)
        log_alpha_table = _discrete_log_alpha(betas).astype(np.float32).astype(np.float64)
        t_table = _torch_linspace_f32(0.0, 1.0, num_train_timesteps + 1)[1:].astype(np.float64)
        t_table = t_table[: len(log_alpha_table)]
        log_alpha = np.interp(t_cont.astype(np.float64), t_table, log_alpha_table)
        alpha = np.exp(log_alpha)
        sigma = np.sqrt(1.0 - np.exp(2.0 * log_alpha))
        orders = np.full(steps, 2)
        orders[0] = 1
        if steps < 10:
            orders[-1] = 1
    else:
        raise ValueError(f"unknown discretization {discretization!r}")
    coef_x, coef_x0, coef_d = _multistep_coefficients(alpha, sigma, orders)
    return DPMSolverSchedule(model_timesteps, alpha, sigma, orders, coef_x, coef_x0, coef_d)


# --------------------------------------------------------------------------------------------------
# Gaussian diffusion (IDDPM / DDIM), respaced
# --------------------------------------------------------------------------------------------------


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
    scale = 1000.0 / num_train_timesteps
    betas = linear_betas(num_train_timesteps, scale * BETA_START, scale * BETA_END)
    return gaussian_diffusion_schedule(betas, space_timesteps(num_train_timesteps, str(steps)))


# --------------------------------------------------------------------------------------------------
# Rectified flow (Open-Sora 1.2)
# --------------------------------------------------------------------------------------------------


def num_frames_equivalent(num_frames: int) -> int:
    """Open-Sora 1.2's latent-length proxy: 1 for images (``num_frames == 1``), else
    ``num_frames // 17 * 5`` (the VAE maps every 17 pixel frames to 5 latent frames)."""
    return 1 if int(num_frames) == 1 else int(num_frames) // 17 * 5


def rflow_time_ratio(height: float, width: float, num_frames: int = 1, *, base_resolution: float = 512 * 512,
                     base_num_frames: float = 1.0, scale: float = 1.0) -> float:
    """``ratio = sqrt(H*W / 512^2) * sqrt(num_frames_eq / 1) * scale`` (H, W in pixels)."""
    ratio_space = math.sqrt(height * width / base_resolution)
    ratio_time = math.sqrt(num_frames_equivalent(num_frames) / base_num_frames)
    ratio = ratio_space * ratio_time * scale
    if ratio <= 0:
        raise ValueError(f"timestep-transform ratio must be > 0, got {ratio} (num_frames={num_frames})")
    return ratio


def rflow_size_from_latent(latent_shape: Sequence[int], *, spatial_factor: int = 8) -> tuple[int, int, int]:
    """(height, width, num_frames) in pixels for a channels-last latent ``(B,H,W,C)`` or ``(B,T,H,W,C)``.

    Spatial sizes are ``latent * spatial_factor``. Frames: images and ``T == 1`` -> 1; ``T`` a multiple
    of 5 -> ``T // 5 * 17`` (so that ``num_frames // 17 * 5 == T``, the Open-Sora 1.2 VAE's 17 -> 5
    compression); other ``T`` are not produced by the released pipeline -> ``ValueError`` (pass the
    pixel sizes explicitly). Prefer passing the requested resolution: Open-Sora uses the requested
    pixel size (e.g. 240x426), which need not be exactly ``latent * 8``.
    """
    if len(latent_shape) == 4:
        return int(latent_shape[1]) * spatial_factor, int(latent_shape[2]) * spatial_factor, 1
    if len(latent_shape) == 5:
        t = int(latent_shape[1])
        if t == 1:
            frames = 1
        elif t % 5 == 0:
            frames = t // 5 * 17
        else:
            raise ValueError(f"cannot infer the pixel frame count of {t} latent frames; pass num_frames")
        return int(latent_shape[2]) * spatial_factor, int(latent_shape[3]) * spatial_factor, frames
    raise ValueError(f"expected a (B,H,W,C) or (B,T,H,W,C) latent shape, got {tuple(latent_shape)}")


def timestep_transform(
    t: np.ndarray | float, ratio: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> np.ndarray:
    """Open-Sora 1.2 ``timestep_transform``: with ``s = t / N``, ``t' = N * r s / (1 + (r - 1) s)``."""
    s = np.asarray(t, dtype=np.float64) / num_train_timesteps
    return ratio * s / (1.0 + (ratio - 1.0) * s) * num_train_timesteps


def rflow_timesteps(
    steps: int = 30, ratio: float | None = None, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> np.ndarray:
    """Rectified-flow model timesteps ``t_i = (1 - i/steps) * N`` (``i = 0..steps-1``), transformed by
    :func:`timestep_transform` when ``ratio`` is given (``use_timestep_transform=True``); float64."""
    t = np.array([(1.0 - i / steps) * num_train_timesteps for i in range(steps)], dtype=np.float64)
    return t if ratio is None else timestep_transform(t, ratio, num_train_timesteps)


@dataclasses.dataclass(frozen=True)
class RFlowSchedule:
    """Model timesteps (float32, as the release feeds them) and Euler step sizes
    ``dt_i = (t_i - t_{i+1}) / N``, the last one ``t_last / N`` (it integrates down to t = 0)."""

    timesteps: np.ndarray  # (steps,) float32
    dt: np.ndarray  # (steps,) float32

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])


def rflow_schedule(
    steps: int = 30, ratio: float | None = None, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> RFlowSchedule:
    """:class:`RFlowSchedule` of :func:`rflow_timesteps` (float32 timesteps; dt from them)."""
    t32 = rflow_timesteps(steps, ratio, num_train_timesteps).astype(np.float32)
    t = t32.astype(np.float64)
    nxt = np.append(t[1:], 0.0)
    dt = ((t - nxt) / num_train_timesteps).astype(np.float32)
    return RFlowSchedule(t32, dt)


# --------------------------------------------------------------------------------------------------
# Conditioning inputs, static/dynamic split, guidance
# --------------------------------------------------------------------------------------------------


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def combine_cfg_inputs(cond: Cond, uncond: Cond) -> dict[str, Any]:
    """Merge conditional and unconditional keyword inputs into one ``2B`` batch (cond rows first).

    Arrays with a batch axis are concatenated on axis 0; a key absent from ``uncond`` reuses the
    conditional value; ``None`` stays ``None``; non-array / 0-d leaves are shared (taken from
    ``cond``). Nested dicts are merged recursively.
    """
    extra = set(uncond) - set(cond)
    if extra:
        raise ValueError(f"uncond has keys that cond lacks: {sorted(extra)}")
    merged: dict[str, Any] = {}
    for k, c in cond.items():
        u = uncond.get(k, c)
        if isinstance(c, Mapping):
            if not isinstance(u, Mapping):
                raise ValueError(f"cond[{k!r}] is a dict but uncond[{k!r}] is not")
            merged[k] = combine_cfg_inputs(c, u)
        elif c is None or u is None:
            if c is not None or u is not None:
                raise ValueError(f"cond[{k!r}] and uncond[{k!r}] must both be None or both be set")
            merged[k] = None
        elif _is_array(c) and np.ndim(c) >= 1:
            if not (_is_array(u) and np.ndim(u) >= 1):
                raise ValueError(f"cond[{k!r}] is a batched array but uncond[{k!r}] is not")
            if np.shape(c)[1:] != np.shape(u)[1:]:
                raise ValueError(f"cond[{k!r}] {np.shape(c)} and uncond[{k!r}] {np.shape(u)} differ beyond axis 0")
            merged[k] = jnp.concatenate([jnp.asarray(c), jnp.asarray(u)], axis=0)
        else:
            if not _is_array(c) and not _is_array(u) and c != u:
                raise ValueError(f"shared input {k!r} differs between cond ({c!r}) and uncond ({u!r})")
            merged[k] = c
    return merged


@dataclasses.dataclass(frozen=True)
class _StaticSpec:
    """Hashable description of a pytree's structure and its non-array leaves."""

    treedef: Any
    static: tuple[tuple[int, Any], ...]

    def join(self, dynamic: list[Any]) -> Any:
        leaves = list(dynamic)
        for i, v in self.static:
            leaves[i] = v
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _split_static(tree: Any) -> tuple[list[Any], _StaticSpec]:
    """Array leaves -> traced list (``None`` at static slots); other leaves -> static spec."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = [leaf if _is_array(leaf) else None for leaf in leaves]
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
    spec = _StaticSpec(treedef, static)
    try:
        hash(spec)
    except TypeError as err:
        raise TypeError(f"non-array leaves of params / cond must be hashable: {err}") from None
    return dynamic, spec


@dataclasses.dataclass(frozen=True)
class _ModelSpec:
    """Everything static about how the model is called inside a jitted loop."""

    apply_fn: Callable[..., Any]
    params_spec: _StaticSpec
    cond_spec: _StaticSpec
    use_cfg: bool
    cfg_channels: int | None  # guided leading channels (None = all C prediction channels)
    step_kwarg: str | None


def _model_output(
    spec: _ModelSpec,
    params: Any,
    cond: Any,
    guidance_scale: jax.Array,
    x: jax.Array,
    timestep: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """One (guided) model evaluation; returns ``(B, ..., C_out)`` in ``x.dtype``.

    With guidance: ``[x; x]`` with the merged ``2B`` conditions, then for the first ``k`` channels
    ``u + s * (c - u)`` and the remaining channels from the conditional half.
    """
    b = x.shape[0]
    kwargs = dict(cond)
    if spec.step_kwarg is not None:
        kwargs[spec.step_kwarg] = step
    if spec.use_cfg:
        x_in = jnp.concatenate([x, x], axis=0)
        t_in = jnp.concatenate([timestep, timestep], axis=0)
    else:
        x_in, t_in = x, timestep
    out = spec.apply_fn(params, x_in, t_in, **kwargs)
    chex.assert_rank(out, x.ndim)
    chex.assert_equal_shape_prefix([out, x_in], x.ndim - 1)
    out = out.astype(x.dtype)
    if not spec.use_cfg:
        return out
    c, u = out[:b], out[b:]
    k = x.shape[-1] if spec.cfg_channels is None else spec.cfg_channels
    guided = u[..., :k] + guidance_scale * (c[..., :k] - u[..., :k])
    return jnp.concatenate([guided, c[..., k:]], axis=-1)


def step_noise(key: jax.Array, step: int | jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Fresh standard-normal noise of sampling step ``step``: ``normal(fold_in(key, step))``."""
    return jax.random.normal(jax.random.fold_in(key, step), tuple(shape), dtype)


def _prepare(
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None,
    guidance_scale: float,
    cfg_channels: int | None,
    step_kwarg: str | None,
) -> tuple[_ModelSpec, list[Any], list[Any]]:
    """Validate inputs, merge the CFG batch and split params / conditions into traced and static parts."""
    chex.assert_rank(noise, {4, 5})
    cond = dict(cond or {})
    use_cfg = uncond is not None and float(guidance_scale) != 1.0
    model_cond = combine_cfg_inputs(cond, uncond) if use_cfg else cond
    if cfg_channels is not None and not 0 < cfg_channels <= noise.shape[-1]:
        raise ValueError(f"cfg_channels must be in [1, {noise.shape[-1]}], got {cfg_channels}")
    params_dyn, params_spec = _split_static(params)
    cond_dyn, cond_spec = _split_static(model_cond)
    spec = _ModelSpec(apply_fn, params_spec, cond_spec, use_cfg, cfg_channels, step_kwarg)
    return spec, params_dyn, cond_dyn


# --------------------------------------------------------------------------------------------------
# One jitted driver; per-sampler update rules
# --------------------------------------------------------------------------------------------------

ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""Inside the loop: ``model(x, timestep_scalar, step) -> guided output (B, ..., C_out)``."""

Tables = dict[str, jax.Array]
"""Per-step values, leading axis = step (sampling order); always ``step`` and ``timestep``."""


def _dpm_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """DPM-Solver++ multistep step; carry = (x, previous data prediction)."""
    del key
    x, x0_prev = carry
    eps = model(x, tab["timestep"], tab["step"])[..., : x.shape[-1]]
    x0 = (x - tab["sigma"] * eps) / tab["alpha"]
    x_next = tab["coef_x"] * x + tab["coef_x0"] * x0 + tab["coef_d"] * (x0 - x0_prev)
    return x_next, x0


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


def _rflow_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """Rectified-flow Euler step ``z += v * dt``."""
    del key
    (x,) = carry
    v = model(x, tab["timestep"], tab["step"])[..., : x.shape[-1]]
    return (x + v * tab["dt"],)


@functools.partial(jax.jit, static_argnames=("spec", "update", "return_trajectory"))
def _sample_loop(
    spec: _ModelSpec,
    update: Callable[..., tuple[jax.Array, ...]],
    params_dyn: list[Any],
    cond_dyn: list[Any],
    guidance_scale: jax.Array,
    init: tuple[jax.Array, ...],
    key: jax.Array | None,
    tables: Tables,
    return_trajectory: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """``lax.scan`` of ``update`` over the per-step tables; the model is traced once."""
    params = spec.params_spec.join(params_dyn)
    cond = spec.cond_spec.join(cond_dyn)

    def model(x: jax.Array, timestep: jax.Array, step: jax.Array) -> jax.Array:
        t = jnp.broadcast_to(timestep, (x.shape[0],))
        return _model_output(spec, params, cond, guidance_scale, x, t, step)

    def body(carry, tab):
        carry = update(model, carry, tab, key)
        return carry, (carry[0] if return_trajectory else None)

    final, traj = jax.lax.scan(body, init, tables)
    return final[0], traj


def _run(
    update: Callable[..., tuple[jax.Array, ...]],
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None,
    *,
    guidance_scale: float,
    cfg_channels: int | None,
    step_kwarg: str | None,
    timesteps: np.ndarray,
    timestep_dtype: Any,
    tables: Mapping[str, np.ndarray],
    key: jax.Array | None,
    with_aux: bool,
    return_trajectory: bool,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Shared front end: build the jitted loop inputs (tables cast to the latent dtype) and run it."""
    spec, params_dyn, cond_dyn = _prepare(apply_fn, params, noise, cond, uncond, guidance_scale, cfg_channels,
                                          step_kwarg)
    # the sampler state runs in (at least) float32, like diffusers / Open-Sora upcast their latents
    noise = jnp.asarray(noise)
    noise = noise.astype(jnp.promote_types(noise.dtype, jnp.float32))
    tabs: Tables = {k: jnp.asarray(v, dtype=noise.dtype) for k, v in tables.items()}
    tabs["step"] = jnp.arange(len(timesteps), dtype=jnp.int32)
    tabs["timestep"] = jnp.asarray(timesteps, dtype=timestep_dtype)
    init = (noise, jnp.zeros_like(noise)) if with_aux else (noise,)
    final, traj = _sample_loop(spec, update, params_dyn, cond_dyn, jnp.asarray(guidance_scale, noise.dtype), init,
                               key, tabs, return_trajectory)
    return (final, traj) if return_trajectory else final


# --------------------------------------------------------------------------------------------------
# Public samplers
# --------------------------------------------------------------------------------------------------


def sample_dpm_solver(
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None = None,
    *,
    steps: int = 20,
    guidance_scale: float = 4.5,
    discretization: Literal["diffusers", "time_uniform"] = "diffusers",
    return_trajectory: bool = False,
    step_kwarg: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DPM-Solver++(2M) sampling as PixArt (20 steps, guidance 4.5), see :func:`dpm_solver_schedule`.

    ``noise``: initial latent ``x_T`` (standard normal; ``init_noise_sigma = 1``). Guidance
    ``u + s (c - u)`` on all ``C`` prediction channels, epsilon from ``out[..., :C]``. Model timestep:
    int32 ``(B,)`` for ``"diffusers"`` (``999, 949, ...``), float32 ``(t - 1/1000) * 1000`` for
    ``"time_uniform"``.
    """
    sched = dpm_solver_schedule(steps, discretization)
    tables = {"alpha": sched.alpha[:-1], "sigma": sched.sigma[:-1], "coef_x": sched.coef_x,
              "coef_x0": sched.coef_x0, "coef_d": sched.coef_d}
    return _run(_dpm_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale, cfg_channels=None,
                step_kwarg=step_kwarg, timesteps=sched.model_timesteps,
                timestep_dtype=jnp.int32 if discretization == "diffusers" else jnp.float32, tables=tables, key=None,
                with_aux=True, return_trajectory=return_trajectory)


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
    return _run(_iddpm_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
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
    if eta != 0.0 and key is None:
        raise ValueError("sample_ddim with eta > 0 needs a PRNG key")
    sched = iddpm_schedule(steps)
    order, tables = _gaussian_tables(sched, clip_denoised)
    abar, abar_prev = sched.alphas_cumprod[order], sched.alphas_cumprod_prev[order]
    sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar)) * np.sqrt(1.0 - abar / abar_prev)
    tables |= {
        "sqrt_abar_prev": np.sqrt(abar_prev),
        "eps_coef": np.sqrt(1.0 - abar_prev - sigma**2),
        "sigma": sigma * tables["nonzero"],
    }
    return _run(_ddim_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                cfg_channels=cfg_channels, step_kwarg=step_kwarg, timesteps=sched.timestep_map[order],
                timestep_dtype=jnp.int32, tables=tables, key=key if eta != 0.0 else None, with_aux=False,
                return_trajectory=return_trajectory)


def sample_rflow(
    apply_fn: ApplyFn,
    params: Any,
    noise: jax.Array,
    cond: Cond | None,
    uncond: Cond | None = None,
    *,
    steps: int = 30,
    guidance_scale: float = 7.0,
    use_timestep_transform: bool = True,
    height: float | None = None,
    width: float | None = None,
    num_frames: int | None = None,
    ratio: float | None = None,
    return_trajectory: bool = False,
    step_kwarg: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Open-Sora 1.2 rectified-flow sampling (``RFLOW.sample``; 30 steps, cfg 7.0, transform on).

    Timesteps from :func:`rflow_schedule` (float32 ``(B,)`` model input); velocity from
    ``out[..., :C]`` guided on all channels; Euler update ``z += v * dt`` where the last ``dt`` is
    ``t_last / 1000`` (integrates to t = 0). The transform ratio is ``ratio`` if given, else
    :func:`rflow_time_ratio` of ``height``, ``width`` (pixels) and ``num_frames`` (pixel frames, 1 for
    images); missing ones come from :func:`rflow_size_from_latent` (latent size x 8). The model's own
    ``height`` / ``width`` / ``fps`` inputs go through ``cond`` as usual.
    """
    if not use_timestep_transform:
        ratio = None
    elif ratio is None:
        if num_frames is None:
            num_frames = rflow_size_from_latent(noise.shape)[2]
        height = noise.shape[-3] * 8 if height is None else height
        width = noise.shape[-2] * 8 if width is None else width
        ratio = rflow_time_ratio(height, width, num_frames)
    sched = rflow_schedule(steps, ratio)
    return _run(_rflow_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                cfg_channels=None, step_kwarg=step_kwarg, timesteps=sched.timesteps, timestep_dtype=jnp.float32,
                tables={"dt": sched.dt}, key=None, with_aux=False, return_trajectory=return_trajectory)

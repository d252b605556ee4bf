"""DPM-Solver++ (2M, multistep, order 2) on the discrete linear VP schedule, epsilon prediction, as
PixArt-α / Σ sample: ``"diffusers"`` (``DPMSolverMultistepScheduler`` defaults) and ``"time_uniform"``
(the original DPM-Solver code) time discretisations."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.sampling.cfg import ApplyFn, Cond
from vidq_jax.sampling.loop import ModelFn, Tables, run_sampler
from vidq_jax.sampling.sampler import Sampler
from vidq_jax.sampling.validate import SamplingArgumentError, check_steps
from vidq_jax.sampling.vp import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, diffusers_alphas_cumprod, linear_betas, \
    torch_linspace_f32

__all__ = ["DPMSolverSchedule", "SAMPLER", "diffusers_dpm_timesteps", "dpm_solver_schedule", "sample_dpm_solver",
           "time_uniform_timesteps"]


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
    t_cont = torch_linspace_f32(1.0, 1.0 / num_train_timesteps, steps + 1)
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
    if discretization not in ("diffusers", "time_uniform"):
        raise SamplingArgumentError(f"discretization must be 'diffusers' or 'time_uniform', got {discretization!r}")
    # the "diffusers" grid repeats a timestep beyond N - 1 steps (a zero step size: NaN coefficients)
    steps = check_steps(steps, maximum=num_train_timesteps - (discretization == "diffusers"))
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
    else:  # "time_uniform"
        t_cont, model_timesteps = time_uniform_timesteps(steps, num_train_timesteps)
        betas = linear_betas(num_train_timesteps, beta_start, beta_end)
        log_alpha_table = _discrete_log_alpha(betas).astype(np.float32).astype(np.float64)
        t_table = torch_linspace_f32(0.0, 1.0, num_train_timesteps + 1)[1:].astype(np.float64)
        t_table = t_table[: len(log_alpha_table)]
        log_alpha = np.interp(t_cont.astype(np.float64), t_table, log_alpha_table)
        alpha = np.exp(log_alpha)
        sigma = np.sqrt(1.0 - np.exp(2.0 * log_alpha))
        orders = np.full(steps, 2)
        orders[0] = 1
        if steps < 10:
            orders[-1] = 1
    coef_x, coef_x0, coef_d = _multistep_coefficients(alpha, sigma, orders)
    return DPMSolverSchedule(model_timesteps, alpha, sigma, orders, coef_x, coef_x0, coef_d)


# --------------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------------


def _dpm_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """DPM-Solver++ multistep step; carry = (x, previous data prediction)."""
    del key
    x, x0_prev = carry
    eps = model(x, tab["timestep"], tab["step"])[..., : x.shape[-1]]
    x0 = (x - tab["sigma"] * eps) / tab["alpha"]
    x_next = tab["coef_x"] * x + tab["coef_x0"] * x0 + tab["coef_d"] * (x0 - x0_prev)
    return x_next, x0


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
    return run_sampler(_dpm_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                       cfg_channels=None, step_kwarg=step_kwarg, timesteps=sched.model_timesteps,
                       timestep_dtype=jnp.int32 if discretization == "diffusers" else jnp.float32, tables=tables,
                       key=None, with_aux=True, return_trajectory=return_trajectory)


def _model_timesteps(steps: int, noise_shape: tuple[int, ...], *, discretization: str) -> np.ndarray:
    """Model timesteps of :func:`sample_dpm_solver` (the latent shape does not matter)."""
    del noise_shape
    return dpm_solver_schedule(steps, discretization).model_timesteps


SAMPLER = Sampler("dpm_solver", "DPM-Solver++(2M)", sample_dpm_solver, _model_timesteps)


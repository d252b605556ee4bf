"""The discrete variance-preserving noise schedule (linear betas, 1000 training steps) shared by
DPM-Solver++ (:mod:`.dpm_solver`) and IDDPM / DDIM (:mod:`.gaussian`)."""

from __future__ import annotations

import numpy as np

__all__ = ["NUM_TRAIN_TIMESTEPS", "BETA_START", "BETA_END", "linear_betas", "torch_linspace_f32",
           "diffusers_alphas_cumprod"]

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


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


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
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
    betas = torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    alphas = np.float32(1.0) - betas
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)

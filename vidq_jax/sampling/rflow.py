"""Open-Sora 1.2 rectified flow: Euler steps on the velocity, with the optional resolution / length
dependent timestep transform."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.sampling.cfg import ApplyFn, Cond
from vidq_jax.sampling.loop import ModelFn, Tables, run_sampler
from vidq_jax.sampling.sampler import Sampler
from vidq_jax.sampling.validate import SamplingArgumentError, check_positive, check_steps
from vidq_jax.sampling.vp import NUM_TRAIN_TIMESTEPS

__all__ = ["RFlowSchedule", "SAMPLER", "num_frames_equivalent", "rflow_schedule", "rflow_size_from_latent",
           "rflow_time_ratio", "rflow_timesteps", "sample_rflow", "timestep_transform"]


def num_frames_equivalent(num_frames: int) -> int:
    """Open-Sora 1.2's latent-length proxy: 1 for images (``num_frames == 1``), else
    ``num_frames // 17 * 5`` (the VAE maps every 17 pixel frames to 5 latent frames)."""
    return 1 if int(num_frames) == 1 else int(num_frames) // 17 * 5


def rflow_time_ratio(height: float, width: float, num_frames: int = 1, *, base_resolution: float = 512 * 512,
                     base_num_frames: float = 1.0, scale: float = 1.0) -> float:
    """``ratio = sqrt(H*W / 512^2) * sqrt(num_frames_eq / 1) * scale`` (H, W in pixels)."""
    for name, v in (("height", height), ("width", width), ("scale", scale)):
        check_positive(v, name)
    check_positive(num_frames, "num_frames", integer=True)
    if num_frames_equivalent(num_frames) <= 0:
        raise SamplingArgumentError(
            f"num_frames must be 1 (an image) or >= 17 pixel frames for the timestep transform, got {num_frames}"
        )
    ratio_space = math.sqrt(height * width / base_resolution)
    ratio_time = math.sqrt(num_frames_equivalent(num_frames) / base_num_frames)
    return ratio_space * ratio_time * scale


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
            raise SamplingArgumentError(f"cannot infer the pixel frame count of {t} latent frames; pass num_frames")
        return int(latent_shape[2]) * spatial_factor, int(latent_shape[3]) * spatial_factor, frames
    raise SamplingArgumentError(f"noise must be a (B, H, W, C) or (B, T, H, W, C) latent, got shape {tuple(latent_shape)}")


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
    steps = check_steps(steps)
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
# Sampler
# --------------------------------------------------------------------------------------------------


def _transform_ratio(noise_shape: Sequence[int], *, use_timestep_transform: bool, height: float | None,
                     width: float | None, num_frames: int | None, ratio: float | None) -> float | None:
    """Timestep-transform ratio of :func:`sample_rflow` (``None``: no transform): ``ratio`` if given,
    else :func:`rflow_time_ratio` of the pixel sizes, missing ones from the latent shape."""
    if not use_timestep_transform:
        return None
    check_positive(height, "height")
    check_positive(width, "width")
    check_positive(num_frames, "num_frames", integer=True)
    check_positive(ratio, "ratio")
    if ratio is None:
        if num_frames is None:
            num_frames = rflow_size_from_latent(noise_shape)[2]
        height = noise_shape[-3] * 8 if height is None else height
        width = noise_shape[-2] * 8 if width is None else width
        ratio = rflow_time_ratio(height, width, num_frames)
    return ratio


def _rflow_update(model: ModelFn, carry: tuple[jax.Array, ...], tab: Tables, key: jax.Array | None):
    """Rectified-flow Euler step ``z += v * dt``."""
    del key
    (x,) = carry
    v = model(x, tab["timestep"], tab["step"])[..., : x.shape[-1]]
    return (x + v * tab["dt"],)


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
    ratio = _transform_ratio(noise.shape, use_timestep_transform=use_timestep_transform, height=height, width=width,
                             num_frames=num_frames, ratio=ratio)
    sched = rflow_schedule(steps, ratio)
    return run_sampler(_rflow_update, apply_fn, params, noise, cond, uncond, guidance_scale=guidance_scale,
                       cfg_channels=None, step_kwarg=step_kwarg, timesteps=sched.timesteps, timestep_dtype=jnp.float32,
                       tables={"dt": sched.dt}, key=None, with_aux=False, return_trajectory=return_trajectory)


def _model_timesteps(steps: int, noise_shape: tuple[int, ...], *, use_timestep_transform: bool,
                     height: float | None, width: float | None, num_frames: int | None,
                     ratio: float | None) -> np.ndarray:
    """Model timesteps of :func:`sample_rflow` (float32) on a latent of shape ``noise_shape``."""
    ratio = _transform_ratio(noise_shape, use_timestep_transform=use_timestep_transform, height=height, width=width,
                             num_frames=num_frames, ratio=ratio)
    return rflow_schedule(steps, ratio).timesteps


SAMPLER = Sampler("rflow", "rectified flow", sample_rflow, _model_timesteps)

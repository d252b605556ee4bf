"""Calibration data recorded along the float model's own sampling trajectories.

ViDiT-Q calibrates on the activations the model sees while it samples (N prompts × every k-th
denoising step × both CFG halves). :func:`collect` runs the family's release sampler
(:func:`vidq_jax.pipeline.sample`, ``return_trajectory=True``) ONCE per prompt batch and slices the
trajectory: the input latent of step ``i`` is the noise for ``i = 0`` and ``trajectory[i - 1]``
otherwise, its model timestep comes from the sampler itself
(:meth:`vidq_jax.sampling.Sampler.timesteps`). Each recorded batch is a dict of the model's keyword
inputs holding BOTH CFG halves as the sampler would run them (``2B`` rows, conditional rows first,
built with :func:`vidq_jax.sampling.combine_cfg_inputs`), so that ``model.apply({"params": p},
**batch)`` runs it and the per-token statistics see the cond and uncond rows separately.

Batches are yielded as ``(name, batch)`` pairs (``"prompts 0-1 step 5 (t=749)"``), the form
:func:`vidq_jax.quant.quantize_params` accepts and names in its errors; ``meta`` of
:class:`CalibBatch` carries the step/timestep for per-timestep analyses (fidelity report,
mixed-precision sensitivity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax import pipeline, sampling, sharding
from vidq_jax.sampling.validate import SamplingArgumentError, check_int


@dataclasses.dataclass(frozen=True)
class CalibBatch:
    """One recorded model call: ``batch`` (model keyword inputs, ``2B`` rows with CFG), where
    it was taken (``step`` in sampling order, model ``timestep``, first prompt index) and the
    ``model`` that ran it (so that ``vidq_jax.quantize_params(params, batches)`` needs no ``model=``)."""

    name: str
    batch: dict[str, Any]
    step: int
    timestep: float
    prompt_start: int
    model: Any = dataclasses.field(default=None, repr=False, compare=False)

    def as_pair(self) -> tuple[str, dict[str, Any]]:
        return self.name, self.batch


def _rows(cond: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of every batched array of ``cond`` (0-d / non-array values shared)."""
    out = {}
    for k, v in cond.items():
        if isinstance(v, Mapping):
            out[k] = _rows(v, start, stop)
        elif v is not None and np.ndim(v) >= 1:
            out[k] = jnp.asarray(v)[start:stop]
        else:
            out[k] = v
    return out


def _num_prompts(cond: Mapping[str, Any]) -> int:
    y = cond.get("y")
    if y is None or np.ndim(y) < 1:
        raise SamplingArgumentError("prompts_cond must hold 'y': caption features (B, L, C) or class labels (B,)")
    return int(np.shape(y)[0])


def collect(
    model,
    params: Any,
    prompts_cond: Mapping[str, Any],
    *,
    num_prompts: int | None = None,
    every_k_steps: int = 1,
    noise_key: jax.Array | None = None,
    latent_shape: Sequence[int] | None = None,
    prompt_batch: int = 2,
    uncond: Mapping[str, Any] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    first_step: int = 0,
    mesh: Any = None,
    seq_strategy: str = "ulysses",
    param_placement: str = "replicate",
    **sampler_kwargs: Any,
) -> Iterator[CalibBatch]:
    """Yield calibration batches recorded along FP sampling trajectories (lazily, prompt batch by
    prompt batch).

    ``prompts_cond``: conditional keyword inputs for all prompts (``y (P, L, C)``, ``mask``, extras);
    the first ``num_prompts`` (default all) are used, ``prompt_batch`` at a time (one sampling run
    each). ``latent_shape``: per-sample latent shape ``(H, W, C)`` / ``(T, H, W, C)`` (default: from
    ``model.init_inputs()`` if the model has one). ``noise_key`` (default ``PRNGKey(0)``) draws the
    noise of each prompt batch (``fold_in(key, batch_index)``) and the IDDPM key. Steps
    ``first_step, first_step + k, ...`` are recorded. ``uncond`` defaults to the learned null caption
    (:func:`vidq_jax.pipeline.null_condition`); other ``sampler_kwargs`` go to the sampler (e.g.
    ``num_frames`` for STDiT3's rectified-flow shift).

    ``mesh`` (a mesh, a device count or ``"data=2,seq=4"``; :mod:`vidq_jax.sharding`): the sampling
    runs on several devices (``seq_strategy`` / ``param_placement``: see there) and the batches stay there, so the
    statistics pass of :func:`vidq_jax.quant.quantize_params` runs there too (inside
    ``vidq_jax.sharding.activate(mesh)`` with the sequence-parallel attention).

    Use ``[b.as_pair() for b in collect(...)]`` (or just the generator: a :class:`CalibBatch` is
    accepted by :func:`calib_pairs`) as ``calib_batches`` of :func:`vidq_jax.quant.quantize_params`.
    """
    check_int(every_k_steps, "every_k_steps")
    check_int(prompt_batch, "prompt_batch")
    total = _num_prompts(prompts_cond)
    n = total if num_prompts is None else check_int(num_prompts, "num_prompts", maximum=total)
    if latent_shape is None:
        if not hasattr(model, "init_inputs"):
            raise SamplingArgumentError("latent_shape is required for a model without init_inputs()")
        latent_shape = tuple(model.init_inputs()["x"].shape[1:])
    if len(tuple(latent_shape)) not in (3, 4):
        raise SamplingArgumentError(f"latent_shape must be (H, W, C) or (T, H, W, C), got {tuple(latent_shape)}")
    latent_shape = tuple(check_int(s, "each entry of latent_shape") for s in latent_shape)
    settings = pipeline.sampler_settings(model, sampler=sampler, steps=steps, guidance_scale=guidance_scale)
    check_int(first_step, "first_step", minimum=0, maximum=settings["steps"] - 1)
    key = jax.random.PRNGKey(0) if noise_key is None else noise_key
    use_cfg = settings["guidance_scale"] != 1.0
    if mesh is not None:  # one mesh for every prompt batch; the noise there too (the step-0 batches)
        mesh = sharding.as_mesh(mesh, rows=2 * prompt_batch if use_cfg else prompt_batch)
    for bi, start in enumerate(range(0, n, prompt_batch)):
        stop = min(start + prompt_batch, n)
        cond = _rows(prompts_cond, start, stop)
        unc = None
        if use_cfg:
            unc = _rows(uncond, start, stop) if uncond is not None else pipeline.null_condition(model, params, cond)
        k_noise, k_sampler = jax.random.split(jax.random.fold_in(key, bi))
        shape = (stop - start, *latent_shape)
        noise = jax.random.normal(k_noise, shape, jnp.float32)
        if mesh is not None:
            noise = sharding.place(noise, mesh, shape[0])
        _, traj = pipeline.sample(model, params, noise, cond, unc, sampler=settings["sampler"], steps=settings["steps"],
                                  guidance_scale=settings["guidance_scale"], key=k_sampler, return_trajectory=True,
                                  mesh=mesh, seq_strategy=seq_strategy, param_placement=param_placement,
                                  **sampler_kwargs)
        batches = trajectory_batches(noise, traj, cond, unc, sampler=settings["sampler"], every_k_steps=every_k_steps,
                                     first_step=first_step, prompt_start=start, model=model, **sampler_kwargs)
        for b in batches:  # on a mesh: every batch laid out alike (rows on data), one compiled statistics pass
            rows = int(b.batch["x"].shape[0])
            yield b if mesh is None else dataclasses.replace(b, batch=sharding.place(b.batch, mesh, rows))


def trajectory_batches(
    noise: jax.Array,
    trajectory: jax.Array,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None,
    *,
    sampler: str,
    every_k_steps: int = 1,
    first_step: int = 0,
    prompt_start: int = 0,
    model: Any = None,
    **sampler_kwargs: Any,
) -> Iterator[CalibBatch]:
    """Calibration batches of ONE float sampling run that has already happened: ``noise`` ``(B, ...)``,
    its ``trajectory`` ``(steps, B, ...)`` (``return_trajectory=True``), the ``cond`` / ``uncond``
    (``None``: no CFG) it ran with and its ``sampler`` name (+ the keywords it ran with, which fix
    the model timesteps: :meth:`vidq_jax.sampling.Sampler.timesteps`). :func:`collect` runs the
    sampler and calls this; a caller that samples the float model anyway (the demo) calibrates on
    its own run without sampling twice. ``model``: recorded in the batches (:attr:`CalibBatch.model`)."""
    if every_k_steps < 1:
        raise ValueError(f"every_k_steps must be >= 1, got {every_k_steps}")
    steps = int(trajectory.shape[0])
    if model is not None:  # the keywords the family derives from the latent's size, as pipeline.sample does
        sampler_kwargs = {**pipeline.size_keywords(model, sampler, noise.shape, sampler_kwargs), **sampler_kwargs}
    ts = sampling.get(sampler).timesteps(steps, noise.shape, **sampler_kwargs)
    model_cond = sampling.combine_cfg_inputs(cond, uncond) if uncond is not None else dict(cond)
    reps = 2 if uncond is not None else 1
    stop = prompt_start + noise.shape[0]
    for i in range(first_step, steps, every_k_steps):
        x = noise if i == 0 else trajectory[i - 1]
        t = jnp.full((x.shape[0],), ts[i], dtype=jnp.float32)
        batch = {"x": jnp.concatenate([x] * reps, axis=0), "timestep": jnp.concatenate([t] * reps, axis=0), **model_cond}
        name = f"prompts {prompt_start}-{stop - 1} step {i} (t={float(ts[i]):g})"
        yield CalibBatch(name, batch, i, float(ts[i]), prompt_start, model)


def calib_pairs(batches) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, batch)`` pairs from :class:`CalibBatch` items (other items passed through)."""
    for b in batches:
        yield b.as_pair() if isinstance(b, CalibBatch) else b


def random_conditioning(model, num_prompts: int, *, seed: int = 0, **sizes: int) -> dict[str, Any]:
    """Stand-in conditioning for ``num_prompts`` prompts shaped like ``model.init_inputs(**sizes)``
    (``sizes``: e.g. ``frames`` / ``height`` / ``width`` of the latent, where ``init_inputs`` takes them):
    standard-normal caption features (class-label models: random classes), all-valid masks, the model's
    own extras (sizes, fps) — for
    fixture/random models and smoke runs when no text-encoder features are at hand."""
    ref = model.init_inputs(batch=num_prompts, **sizes)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for k, v in ref.items():
        if k in ("x", "timestep"):
            continue
        if k == "y" and jnp.issubdtype(v.dtype, jnp.integer):  # class labels (DiT): random classes
            out[k] = jnp.asarray(rng.integers(0, model.config.num_classes, v.shape), jnp.int32)
        elif k == "y":
            out[k] = jnp.asarray(rng.standard_normal(v.shape).astype(np.float32))
        elif k == "mask":
            out[k] = jnp.ones(v.shape, jnp.int32)
        else:
            out[k] = v
    return out


__all__ = ["CalibBatch", "calib_pairs", "collect", "random_conditioning", "trajectory_batches"]

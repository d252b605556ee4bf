"""The one jitted sampling driver every sampler runs: a ``lax.scan`` of a per-sampler update rule
over per-step tables, the model traced once (conventions in :mod:`vidq_jax.sampling`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.sampling.cfg import ApplyFn, Cond, ModelSpec, combine_cfg_inputs, guided_output, split_static
from vidq_jax.sampling.validate import SamplingArgumentError, check_conditions, check_guidance, check_noise, is_traced

__all__ = ["ModelFn", "Tables", "run_sampler", "sample_loop", "step_noise"]

ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""Inside the loop: ``model(x, timestep_scalar, step) -> guided output (B, ..., C_out)``."""

Tables = dict[str, jax.Array]
"""Per-step values, leading axis = step (sampling order); always ``step`` and ``timestep``."""


def step_noise(key: jax.Array, step: int | jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Fresh standard-normal noise of sampling step ``step``: ``normal(fold_in(key, step))``."""
    return jax.random.normal(jax.random.fold_in(key, step), tuple(shape), dtype)


@functools.partial(jax.jit, static_argnames=("spec", "update", "return_trajectory"))
def sample_loop(
    spec: ModelSpec,
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
        return guided_output(spec, params, cond, guidance_scale, x, t, step)

    def body(carry, tab):
        carry = update(model, carry, tab, key)
        return carry, (carry[0] if return_trajectory else None)

    final, traj = jax.lax.scan(body, init, tables)
    return final[0], traj


def run_sampler(
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
    """Shared front end of every sampler: validate the inputs (:mod:`.validate`: one-line
    :class:`~.validate.SamplingArgumentError` naming the argument; values of concrete arrays only),
    merge the CFG batch, split params / conditions into traced and static parts, build the loop
    inputs (tables cast to the latent dtype) and run the jitted loop."""
    check_noise(noise)
    guidance_scale = check_guidance(guidance_scale)
    cond = dict(cond or {})
    check_conditions(cond, uncond, int(np.shape(noise)[0]))
    # a traced guidance scale cannot be compared with 1: run CFG whenever an uncond is given
    use_cfg = uncond is not None and (is_traced(guidance_scale) or guidance_scale != 1.0)
    model_cond = combine_cfg_inputs(cond, uncond) if use_cfg else cond
    c = np.shape(noise)[-1]
    if cfg_channels is not None and (isinstance(cfg_channels, bool) or not isinstance(cfg_channels, (int, np.integer))
                                     or not 0 < cfg_channels <= c):
        raise SamplingArgumentError(f"cfg_channels must be an integer in [1, {c}], got {cfg_channels!r}")
    params_dyn, params_spec = split_static(params)
    cond_dyn, cond_spec = split_static(model_cond)
    spec = ModelSpec(apply_fn, params_spec, cond_spec, use_cfg, cfg_channels, step_kwarg)
    # the sampler state runs in (at least) float32, like diffusers / Open-Sora upcast their latents
    noise = jnp.asarray(noise)
    noise = noise.astype(jnp.promote_types(noise.dtype, jnp.float32))
    tabs: Tables = {k: jnp.asarray(v, dtype=noise.dtype) for k, v in tables.items()}
    tabs["step"] = jnp.arange(len(timesteps), dtype=jnp.int32)
    tabs["timestep"] = jnp.asarray(timesteps, dtype=timestep_dtype)
    init = (noise, jnp.zeros_like(noise)) if with_aux else (noise,)
    final, traj = sample_loop(spec, update, params_dyn, cond_dyn, jnp.asarray(guidance_scale, noise.dtype), init,
                              key, tabs, return_trajectory)
    return (final, traj) if return_trajectory else final

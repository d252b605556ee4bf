"""Model-aware sampling: the release's sampler and settings for each model family, CFG inputs.

| model | sampler (release default) | null caption |
|---|---|---|
| PixArt-α / Σ / diffusers | DPM-Solver++(2M), 20 steps, CFG 4.5 | learned ``y_embedding`` (α); T5("") for Σ/diffusers, supplied by the caller |
| STDiT (Open-Sora 1.0) | IDDPM, 100 steps (ViDiT-Q also 20), CFG 7.0 on channels 0..2 | learned ``y_embedding`` |
| STDiT3 (Open-Sora 1.2) | rectified flow, 30 steps, CFG 7.0 | learned ``y_embedding`` |

``sample(model, params, noise, cond, ...)`` runs the family's sampler with a cached ``apply_fn``
(the samplers cache their compiled loop on its identity), so repeated calls never retrace.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from vidq_jax import sampling

_APPLY_FNS: dict[int, tuple[Any, Callable]] = {}

SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "PixArt": {"sampler": "dpm_solver", "steps": 20, "guidance_scale": 4.5},
    "STDiT": {"sampler": "iddpm", "steps": 100, "guidance_scale": 7.0},
    "STDiT3": {"sampler": "rflow", "steps": 30, "guidance_scale": 7.0},
}

_SAMPLERS = {
    "dpm_solver": sampling.sample_dpm_solver,
    "iddpm": sampling.sample_iddpm,
    "ddim": sampling.sample_ddim,
    "rflow": sampling.sample_rflow,
}


def apply_fn_for(model) -> Callable:
    """``apply_fn(params, x, t, **cond)`` for ``model``; the same function object on every call."""
    entry = _APPLY_FNS.get(id(model))
    if entry is None or entry[0] is not model:

        def apply_fn(params, x, t, **cond):
            return model.apply({"params": params}, x, t, **cond)

        entry = (model, apply_fn)
        _APPLY_FNS[id(model)] = entry
    return entry[1]


def family(model) -> str:
    name = type(model).__name__
    if name not in SAMPLER_DEFAULTS:
        raise ValueError(f"no sampler defaults for model class {name}; known: {sorted(SAMPLER_DEFAULTS)}")
    return name


def null_condition(model, params, cond: Mapping[str, Any]) -> dict[str, Any]:
    """The unconditional half for CFG: the learned null caption, everything else (mask, sizes, fps)
    reused from ``cond`` as the releases do."""
    y = jnp.asarray(cond["y"])
    if getattr(model.config, "null_caption", "learned") != "learned":
        raise ValueError(
            f"{type(model).__name__} ({getattr(model.config, 'family', '')}) uses the text encoder's embedding of the "
            "empty prompt as its null caption; pass uncond={'y': ..., 'mask': ...} explicitly"
        )
    null = jnp.asarray(params["y_embedder"]["y_embedding"], y.dtype)
    if null.shape != y.shape[1:]:
        raise ValueError(f"caption y {y.shape} does not fit the learned null caption {null.shape} (B, L, C expected)")
    return {"y": jnp.broadcast_to(null, y.shape)}


def sampler_settings(model, *, sampler: str | None = None, steps: int | None = None,
                     guidance_scale: float | None = None) -> dict[str, Any]:
    """The family's release settings (:data:`SAMPLER_DEFAULTS`) with overrides applied."""
    d = SAMPLER_DEFAULTS[family(model)]
    name = sampler or d["sampler"]
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    return {
        "sampler": name,
        "steps": int(steps or d["steps"]),
        "guidance_scale": float(d["guidance_scale"] if guidance_scale is None else guidance_scale),
    }


def exported_sampler(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`sample` from the sampler settings a model folder was saved with
    (``model.json``'s ``"sampler"``: ``name``, ``steps``, ``guidance_scale`` and any keyword of that
    sampler function, e.g. ``use_timestep_transform`` / ``discretization``; descriptive entries such
    as ``prediction`` are dropped). A folder without settings gets the family defaults (``{}``)."""
    import inspect

    s = dict(meta.get("sampler") or {})
    if not s:
        return {}
    name = s.pop("name", None) or s.pop("sampler", None)
    if name not in _SAMPLERS:
        raise ValueError(f"model.json names an unknown sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    out: dict[str, Any] = {"sampler": name}
    for k in ("steps", "guidance_scale"):
        if k in s:
            out[k] = s.pop(k)
    accepted = inspect.signature(_SAMPLERS[name]).parameters
    out.update({k: v for k, v in s.items() if k in accepted and k not in ("steps", "guidance_scale")})
    return out


def sample(
    model,
    params: Any,
    noise: jax.Array,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None = None,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    key: jax.Array | None = None,
    apply_fn: Callable | None = None,
    **sampler_kwargs: Any,
):
    """Sample with the family's release sampler (overridable). ``uncond`` defaults to
    :func:`null_condition`; ``key`` is required by the ancestral IDDPM sampler; ``apply_fn``
    replaces the plain model call (e.g. a per-timestep-segment wrapper; create it once and reuse it,
    the compiled loop is cached on its identity)."""
    st = sampler_settings(model, sampler=sampler, steps=steps, guidance_scale=guidance_scale)
    kwargs = dict(steps=st["steps"], guidance_scale=st["guidance_scale"])
    if st["sampler"] == "iddpm":
        if key is None:
            raise ValueError("the IDDPM sampler needs a PRNG key")
        kwargs["key"] = key
    elif key is not None and st["sampler"] == "ddim":
        kwargs["key"] = key
    if uncond is None and st["guidance_scale"] != 1.0:
        uncond = null_condition(model, params, cond)
    fn = apply_fn or apply_fn_for(model)
    return _SAMPLERS[st["sampler"]](fn, params, noise, dict(cond), uncond, **kwargs, **sampler_kwargs)

"""Model-aware sampling: the release's sampler and settings for each model family, CFG inputs.

Each family declares its release sampler, its settings and its null-caption policy once
(:mod:`models.families`): PixArt DPM-Solver++(2M) 20 steps CFG 4.5, STDiT IDDPM 100 steps CFG 7.0
(ViDiT-Q also uses 20), STDiT3 rectified flow 30 steps CFG 7.0, DiT IDDPM 250 steps CFG 4.0; the learned
``y_embedding`` is the null caption except for PixArt-Σ / diffusers, whose T5("") embedding the caller
supplies, and the class-label models (DiT: ``y`` = ``(B,)`` labels), whose null class is the label
``num_classes``.

``sample(model, params, noise, cond, ...)`` runs the family's sampler with a cached ``apply_fn``
(the samplers cache their compiled loop on its identity), so repeated calls never retrace.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models.families import family_of, find_family
from vidq_jax import sampling, sharding
from vidq_jax.sampling.validate import SamplingArgumentError, check_guidance, check_steps, is_traced

_APPLY_FNS: dict[int, tuple[Any, Callable]] = {}


def apply_fn_for(model) -> Callable:
    """``apply_fn(params, x, t, **cond)`` for ``model``; the same function object on every call."""
    entry = _APPLY_FNS.get(id(model))
    if entry is None or entry[0] is not model:

        def apply_fn(params, x, t, **cond):
            return model.apply({"params": params}, x, t, **cond)

        entry = (model, apply_fn)
        _APPLY_FNS[id(model)] = entry
    return entry[1]


def class_labels(model, y: Any, name: str = "cond['y']") -> jax.Array:
    """``y`` as the ``(B,)`` int32 labels of a class-conditional model (null policy ``"null-class"``, e.g.
    DiT): integers in ``[0, num_classes]``, where ``num_classes`` is the null class (unconditional);
    anything else is a one-line :class:`~vidq_jax.sampling.SamplingArgumentError` (values are checked on
    concrete arrays only)."""
    n = int(model.config.num_classes)
    top = n if getattr(model.config, "use_cfg_embedding", True) else n - 1  # no null-class row: no CFG
    allowed = f"(B,) integer class labels in [0, {top}]" + (f" ({n} = the null class)" if top == n else "")
    if y is None or np.ndim(y) != 1 or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        got = "nothing" if y is None else f"{jnp.result_type(y)} {tuple(np.shape(y))}"
        raise SamplingArgumentError(f"{name} must be {allowed} for {type(model).__name__}, got {got}")
    if not is_traced(y) and np.size(y) and not (0 <= int(np.min(y)) and int(np.max(y)) <= top):
        bad = sorted({int(v) for v in np.asarray(y).ravel() if not 0 <= v <= top})
        raise SamplingArgumentError(f"{name} must be {allowed}, got {bad[:5]}")
    return jnp.asarray(y, jnp.int32)


def null_condition(model, params, cond: Mapping[str, Any]) -> dict[str, Any]:
    """The unconditional half for CFG: the learned null caption (class-label models: the null class
    ``num_classes``), everything else (mask, sizes, fps) reused from ``cond`` as the releases do."""
    if family_of(model).null_caption_of(model) == "null-class":
        y = class_labels(model, cond.get("y"))
        if not getattr(model.config, "use_cfg_embedding", True):
            raise SamplingArgumentError(f"{type(model).__name__} was trained without label dropout: it has no null "
                                        "class for classifier-free guidance; sample with guidance_scale=1")
        return {"y": jnp.full_like(y, model.config.num_classes)}
    if cond.get("y") is None or jnp.ndim(cond["y"]) != 3:
        raise SamplingArgumentError("cond must hold the caption features 'y' (B, L, C) to build the null caption")
    y = jnp.asarray(cond["y"])
    if family_of(model).null_caption_of(model) != "learned":
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
    """The family's release settings (``models.families``: ``Family.sampler``) with overrides applied
    (``None`` = the release value; anything else is validated, never silently replaced: ``steps=0``
    is a :class:`~vidq_jax.sampling.SamplingArgumentError`)."""
    d = family_of(model).sampler
    name = d.name if sampler is None else sampler
    sampling.get(name)  # ValueError naming the registered samplers
    g = check_guidance(d.guidance_scale if guidance_scale is None else guidance_scale)
    return {
        "sampler": name,
        "steps": check_steps(d.steps if steps is None else steps),
        "guidance_scale": g if is_traced(g) else float(g),
    }


def size_keywords(model, sampler: str, latent_shape, given: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of the family's release sampler that its family derives from the latent's shape
    (``SamplerDefaults.size_keywords``: e.g. STDiT3's pixel ``num_frames`` for the rectified-flow
    shift), those not in ``given``; ``{}`` for another sampler or a model of no family."""
    fam = find_family(model)
    derive = fam.sampler.size_keywords if fam is not None and fam.sampler.name == sampler else None
    if derive is None:
        return {}
    return {k: v for k, v in derive(tuple(latent_shape), given).items() if k not in given}


def exported_sampler(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`sample` from the sampler settings a model folder was saved with
    (``model.json``'s ``"sampler"``: ``name``, ``steps``, ``guidance_scale`` and any keyword of that
    sampler function, e.g. ``use_timestep_transform`` / ``discretization``; descriptive entries such
    as ``prediction`` are dropped). A folder without settings gets the family defaults (``{}``)."""
    s = dict(meta.get("sampler") or {})
    if not s:
        return {}
    name = s.pop("name", None) or s.pop("sampler", None)
    if name not in sampling.SAMPLERS:
        raise ValueError(f"model.json names an unknown sampler {name!r}; choose one of {sorted(sampling.SAMPLERS)}")
    out: dict[str, Any] = {"sampler": name}
    for k in ("steps", "guidance_scale"):
        if k in s:
            out[k] = s.pop(k)
    accepted = sampling.get(name).keywords
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
    plan: Any = None,
    mesh: Any = None,
    seq_strategy: str = "ulysses",
    param_placement: str = "replicate",
    **sampler_kwargs: Any,
):
    """Sample with the family's release sampler (overridable). ``uncond`` defaults to
    :func:`null_condition`; ``key`` is required by the ancestral IDDPM sampler; ``apply_fn``
    replaces the plain model call (e.g. a per-timestep-segment wrapper; create it once and reuse it,
    the compiled loop is cached on its identity). ``plan``: the
    :class:`~vidq_jax.quant.plan.MixedPrecisionPlan` of segment-planned params (its step table
    stretched to ``steps``) or an explicit per-step segment table: each step runs its segment's
    weights (:func:`vidq_jax.quant.segmented.segment_apply_fn`, ``step_kwarg="step"``). ``mesh``: run
    on several devices (a :class:`jax.sharding.Mesh` with axes ``data``/``seq``, a device count or
    ``"data=2,seq=4"``; :mod:`vidq_jax.sharding`) with the ``seq_strategy`` of its attention
    (``"ulysses"`` / ``"ring"``) and params ``param_placement`` (``"replicate"`` / ``"shard"`` along N);
    the result is a global array on the mesh (``vidq_jax.sharding.to_host`` fetches it)."""
    st = sampler_settings(model, sampler=sampler, steps=steps, guidance_scale=guidance_scale)
    if family_of(model).null_caption_of(model) == "null-class":
        cond = {**cond, "y": class_labels(model, cond.get("y"))}
    if plan is not None:
        from vidq_jax.quant.segmented import segment_apply_fn

        if apply_fn is not None:
            raise ValueError("pass either plan= (segment-planned params) or apply_fn=, not both")
        table = plan.step_segments(st["steps"]) if hasattr(plan, "step_segments") else tuple(plan)
        if len(table) != st["steps"]:
            raise ValueError(f"segment table has {len(table)} entries for {st['steps']} steps")
        apply_fn, sampler_kwargs = segment_apply_fn(model, table), {**sampler_kwargs, "step_kwarg": "step"}
    smp = sampling.get(st["sampler"])
    sampler_kwargs = {**size_keywords(model, st["sampler"], noise.shape, sampler_kwargs), **sampler_kwargs}
    kwargs = dict(steps=st["steps"], guidance_scale=st["guidance_scale"], **smp.key_kwargs(key))
    if uncond is None and (is_traced(st["guidance_scale"]) or st["guidance_scale"] != 1.0):
        uncond = null_condition(model, params, cond)
    fn = apply_fn or apply_fn_for(model)
    if mesh is not None:
        guided = uncond is not None and (is_traced(st["guidance_scale"]) or st["guidance_scale"] != 1.0)
        fn, params, noise, cond, uncond = sharding.prepare_sampling(
            model, fn, params, noise, cond, uncond, mesh=mesh, guided=guided, strategy=seq_strategy,
            placement=param_placement)
    return smp.sample(fn, params, noise, dict(cond), uncond, **kwargs, **sampler_kwargs)

"""Fidelity of a quantized model to its float twin (same noise, same conditioning, same sampler).

* per-step latent relative error and SQNR along the sampling trajectory (:func:`trajectory_errors`);
* per-step SQNR of the quantized denoiser's output on the float trajectory's inputs
  (:func:`denoiser_sqnr_by_step`: what one step's quantization error is, without the drift of earlier
  steps; :func:`step_summary`: mean, min, worst step);
* final-output PSNR and SSIM vs the float output (:func:`latent_psnr_ssim`, the metrics of
  :mod:`vidq_jax.eval.quality`; videos are scored frame by frame). Without a VAE in the loop they are
  computed on the latents, with the float latent's value range as the data range;
* per-layer incoherence ``max|x| / mean|x|`` per token of the Dense inputs, before and after the
  layer's balancing (smoothing + rotation stored in its record), per calibration timestep
  (:func:`incoherence_by_timestep`; the paper's 40.75 → 5.02 figure);
* model bytes (:func:`vidq_jax.checkpoint.params_nbytes`).

:func:`fidelity_report` bundles them into one JSON-serialisable dict.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-30


def relative_error(ref: jax.Array, x: jax.Array) -> float:
    """``‖x − ref‖ / ‖ref‖`` (L2 over all elements)."""
    ref = jnp.asarray(ref, jnp.float32)
    return float(jnp.linalg.norm((jnp.asarray(x, jnp.float32) - ref).ravel()) / jnp.maximum(jnp.linalg.norm(ref.ravel()), _EPS))


def sqnr_db(ref: jax.Array, x: jax.Array) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(‖ref‖² / ‖x − ref‖²)`` in dB (inf if equal)."""
    ref = jnp.asarray(ref, jnp.float32)
    noise = float(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32) - ref)))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(float(jnp.sum(jnp.square(ref))), _EPS) / noise))


def trajectory_errors(traj_ref: jax.Array, traj: jax.Array) -> dict[str, list[float]]:
    """Per-step ``rel_error`` and ``sqnr_db`` of two trajectories ``(steps, *latent)``."""
    if traj_ref.shape != traj.shape:
        raise ValueError(f"trajectory shapes differ: {traj_ref.shape} vs {traj.shape}")
    return {
        "rel_error": [relative_error(traj_ref[i], traj[i]) for i in range(traj.shape[0])],
        "sqnr_db": [sqnr_db(traj_ref[i], traj[i]) for i in range(traj.shape[0])],
    }


def latent_range(ref: jax.Array) -> tuple[float, float]:
    """``(min, max)`` of the float reference: the value range PSNR/SSIM use on latents (no VAE)."""
    lo, hi = float(jnp.min(ref)), float(jnp.max(ref))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def latent_psnr_ssim(ref: jax.Array, x: jax.Array) -> tuple[float, float]:
    """PSNR (dB, capped like :func:`vidq_jax.eval.quality.psnr`) and SSIM of latents ``x`` vs the
    float ``ref``, with ``ref``'s value range as the data range (SSIM: both mapped by it to [0, 1]).
    One implementation of the metrics: :mod:`vidq_jax.eval.quality`."""
    from vidq_jax.eval.quality import psnr, ssim

    lo, hi = latent_range(ref)
    ref, x = jnp.asarray(ref), jnp.asarray(x)
    return psnr(ref, x, data_range=hi - lo), ssim(ref, x, value_range=(lo, hi))


def balance_transforms(qparams: Mapping[str, Any]) -> dict[str, tuple]:
    """``{path: (smooth, hadamard_signs)}`` of every balanced record (segmented layers: variant 0)."""
    from vidq_jax.quant.record import QuantizedWeight
    from vidq_jax.quant.segmented import SegmentedWeight
    from vidq_jax.quant.tree import dense_kernels

    out = {}
    for p, rec in dense_kernels(qparams).items():
        if isinstance(rec, SegmentedWeight):
            rec = next((v for v in rec.variants if isinstance(v, QuantizedWeight)), None)
        if isinstance(rec, QuantizedWeight) and (rec.smooth is not None or rec.hadamard_signs is not None):
            out[p] = (rec.smooth, rec.hadamard_signs)
    return out


def incoherence_by_timestep(model, params: Any, qparams: Any, calib_batches: Sequence[Any]) -> dict[str, Any]:
    """Per-token incoherence of every balanced layer's input at each calibration timestep, before
    and after its balancing (float model activations). ``calib_batches``:
    :class:`vidq_jax.calibration.CalibBatch` records (grouped by ``timestep``).

    Returns ``{"timesteps": [...], "layers": {path: {"mean_before", "mean_after", "max_before",
    "max_after"}: [per timestep]}, "summary": {...}}``; the summary gives, per timestep, the mean over
    layers and the layer with the largest initial incoherence (the paper's example-layer figure).
    """
    from vidq_jax.quant.stats import make_stats_fn

    transforms = balance_transforms(qparams)
    if not transforms:
        return {"timesteps": [], "layers": {}, "summary": {}}
    paths = sorted(transforms)
    before_fn, _ = make_stats_fn(model, paths)
    after_fn, _ = make_stats_fn(model, paths, transforms)
    by_t: dict[float, list] = {}
    for b in calib_batches:
        by_t.setdefault(float(b.timestep), []).append(b.batch)
    ts = sorted(by_t, reverse=True)  # sampling order: noisiest first
    layers = {p: {k: [] for k in ("mean_before", "mean_after", "max_before", "max_after")} for p in paths}
    for t in ts:
        acc = {p: {"b_sum": 0.0, "a_sum": 0.0, "rows": 0, "b_max": 0.0, "a_max": 0.0} for p in paths}
        for batch in by_t[t]:
            rb, ra = jax.device_get(before_fn(params, batch)), jax.device_get(after_fn(params, batch))
            for p in paths:
                rb_p, ra_p = rb[p]["absmax"], ra[p]["absmax"]
                a = acc[p]
                a["b_sum"] += float(rb_p["inc_sum"])
                a["a_sum"] += float(ra_p["inc_sum"])
                a["rows"] += int(rb_p["rows"])
                a["b_max"] = max(a["b_max"], float(rb_p["inc_max"]))
                a["a_max"] = max(a["a_max"], float(ra_p["inc_max"]))
        for p in paths:
            a, L = acc[p], layers[p]
            L["mean_before"].append(a["b_sum"] / max(a["rows"], 1))
            L["mean_after"].append(a["a_sum"] / max(a["rows"], 1))
            L["max_before"].append(a["b_max"])
            L["max_after"].append(a["a_max"])
    worst = max(paths, key=lambda p: layers[p]["max_before"][0])
    summary = {
        "mean_before": [float(np.mean([layers[p]["mean_before"][i] for p in paths])) for i in range(len(ts))],
        "mean_after": [float(np.mean([layers[p]["mean_after"][i] for p in paths])) for i in range(len(ts))],
        "worst_layer": worst,
        "worst_max_before": layers[worst]["max_before"],
        "worst_max_after": layers[worst]["max_after"],
    }
    return {"timesteps": ts, "layers": layers, "summary": summary}


_DENOISERS: dict[int, tuple[Any, Any]] = {}


def _denoiser(model) -> Any:
    """``model``'s jitted ``(params, batch) -> output``, one per model: every call of
    :func:`denoiser_sqnr_by_step` on it reuses the programs compiled by the earlier ones."""
    entry = _DENOISERS.get(id(model))
    if entry is None or entry[0] is not model:
        entry = (model, jax.jit(lambda p, b: model.apply({"params": p}, **b)))
        _DENOISERS[id(model)] = entry
    return entry[1]


@functools.partial(jax.jit, static_argnames="channels")
def _error_sums(ref: jax.Array, out: jax.Array, channels: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(‖ref‖², ‖out − ref‖², max|out − ref|)`` over the first ``channels`` channels, in float32."""
    ref = ref[..., :channels].astype(jnp.float32)
    d = out[..., :channels].astype(jnp.float32) - ref
    return jnp.sum(jnp.square(ref)), jnp.sum(jnp.square(d)), jnp.max(jnp.abs(d))


def denoiser_sqnr_by_step(
    model,
    params: Any,
    variants: Mapping[str, Any],
    batches: Sequence[Any],
    *,
    channels: int | None = None,
    versus: str | None = None,
    jitter: float | None = None,
    outputs: dict | None = None,
) -> dict[str, Any]:
    """Per-step SQNR (dB) of each variant's denoiser output against the float one, on the model inputs
    of ``batches`` (:class:`vidq_jax.calibration.CalibBatch` records, e.g. every step of a float
    sampling run: :func:`vidq_jax.calibration.trajectory_batches` with ``every_k_steps=1``).

    ``variants``: ``{name: params}`` (quantized trees, bf16 leaves already upcast as the sampler would).
    ``channels``: compare the first ``channels`` output channels only (the prediction the sampler
    reads, not a learned-sigma half). ``versus``: also each variant against that variant (e.g. a
    kernel backend against ``simulate``). ``jitter`` (with ``versus``): also the ``versus`` variant on
    inputs scaled by ``1 + jitter`` against itself (``"floor"``): how far float rounding alone moves a
    quantized model (flipped rounding decisions of its activation quantizers), the floor below which
    two backends' differences are rounding, not a wrong kernel. ``outputs``: a dict the caller keeps
    between calls on the same ``batches``: the float model's and every variant's outputs (by name; a name
    must mean the same params in every call) are computed once and reused, e.g. one backend per call against
    the same float model and ``versus`` variant. The model is compiled once per params structure, whatever
    the number of steps, and the sums stay on the device until the end. Returns ``{"steps", "timesteps",
    "sqnr_db": {name: [per step]}, "max_abs": {name: [per step]}}`` (+ ``"sqnr_vs"``, ``"max_abs_vs"`` with
    ``versus``, ``"floor"`` with ``jitter``); the steps in the batches' order, several batches of one step
    pooled."""
    if versus is not None and versus not in variants:
        raise ValueError(f"versus={versus!r} is not one of the variants {sorted(variants)}")
    apply = _denoiser(model)
    batches = list(batches)
    steps: list[int] = []
    timesteps: list[float] = []
    for b in batches:
        if b.step not in steps:
            steps.append(b.step)
            timesteps.append(float(b.timestep))
    sums: dict[str, list[list[tuple]]] = {}  # per key, per step: (signal, noise, max_abs) of each batch

    def add(key: str, i: int, ref: jax.Array, out: jax.Array) -> None:
        sums.setdefault(key, [[] for _ in steps])[i].append(_error_sums(ref, out, channels))

    for j, b in enumerate(batches):
        memo = outputs if outputs is not None else {}

        def output(name: Any, p: Any, batch: dict) -> jax.Array:  # name None: the float model
            done = memo.setdefault(name, {})
            if j not in done:
                done[j] = apply(p, batch)
            return done[j]

        i = steps.index(b.step)
        ref = output(None, params, b.batch)
        outs = {n: output(n, p, b.batch) for n, p in variants.items()}
        for n, out in outs.items():
            add(n, i, ref, out)
            if versus is not None and n != versus:
                add(f"vs:{n}", i, outs[versus], out)
        if versus is not None and jitter is not None:
            moved = output(("jitter", versus, jitter), variants[versus],
                           {**b.batch, "x": b.batch["x"] * (1.0 + jitter)})
            add("floor", i, outs[versus], moved)

    def db(sig: float, noise: float) -> float:
        return float("inf") if noise == 0.0 else float(10.0 * np.log10(max(sig, _EPS) / noise))

    host = jax.device_get(sums)  # one transfer at the end
    totals = {key: [(sum(float(a[0]) for a in per), sum(float(a[1]) for a in per), max(float(a[2]) for a in per))
                    for per in acc] for key, acc in host.items()}
    out: dict[str, Any] = {"steps": steps, "timesteps": timesteps, "sqnr_db": {}, "max_abs": {}}
    if versus is not None:
        out.update(versus=versus, sqnr_vs={}, max_abs_vs={})
    if "floor" in totals:
        out["floor"] = [db(a[0], a[1]) for a in totals.pop("floor")]
    for key, acc in totals.items():
        vs = key.startswith("vs:")
        name = key[3:] if vs else key
        out["sqnr_vs" if vs else "sqnr_db"][name] = [db(a[0], a[1]) for a in acc]
        out["max_abs_vs" if vs else "max_abs"][name] = [a[2] for a in acc]
    return out


def step_summary(values: Sequence[float], steps: Sequence[int], timesteps: Sequence[float]) -> dict[str, Any]:
    """Mean, min and the worst step (lowest value: its sampling step and model timestep) of per-step
    values such as :func:`denoiser_sqnr_by_step`'s SQNR."""
    v = np.asarray(values, np.float64)
    w = int(np.argmin(v))
    return {"mean": float(np.mean(v)), "min": float(v[w]), "worst_step": int(steps[w]),
            "worst_timestep": float(timesteps[w])}


def fidelity_report(
    model,
    params: Any,
    qparams: Any,
    noise: jax.Array,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None = None,
    *,
    calib_batches: Sequence[Any] | None = None,
    plan: Any = None,
    reference: tuple[jax.Array, jax.Array] | None = None,
    **sample_kwargs: Any,
) -> dict[str, Any]:
    """Sample float and quantized from the same ``noise`` (the family's release sampler;
    ``sample_kwargs`` e.g. ``steps``, ``key``, ``num_frames``) and compare. ``plan``: the
    :class:`~vidq_jax.quant.plan.MixedPrecisionPlan` of segment-planned ``qparams``.
    ``reference``: a precomputed float ``(final, trajectory)`` (skips the float run).
    ``calib_batches`` (CalibBatch records) adds the incoherence analysis."""
    from vidq_jax import pipeline
    from vidq_jax.checkpoint import params_nbytes
    from vidq_jax.quant.segmented import segmented_layers

    if reference is None:
        reference = pipeline.sample(model, params, noise, cond, uncond, return_trajectory=True, **sample_kwargs)
    ref_final, ref_traj = reference
    if plan is None and segmented_layers(qparams):
        raise ValueError("qparams hold segmented (mixed-precision) layers: pass their plan")
    final, traj = pipeline.sample(model, qparams, noise, cond, uncond, plan=plan, return_trajectory=True,
                                  **sample_kwargs)
    steps = trajectory_errors(ref_traj, traj)
    p, s = latent_psnr_ssim(ref_final, final)
    out = {
        "final_rel_error": relative_error(ref_final, final),
        "final_sqnr_db": sqnr_db(ref_final, final),
        "psnr_db": p,
        "ssim": s,
        "finite": bool(jnp.all(jnp.isfinite(final))),
        "steps": steps,
        "bytes": params_nbytes(qparams),
        "float_bytes": params_nbytes(params),
    }
    if calib_batches is not None:
        out["incoherence"] = incoherence_by_timestep(model, params, qparams, calib_batches)
    return out


__all__ = [
    "balance_transforms",
    "denoiser_sqnr_by_step",
    "fidelity_report",
    "incoherence_by_timestep",
    "latent_psnr_ssim",
    "latent_range",
    "relative_error",
    "sqnr_db",
    "step_summary",
    "trajectory_errors",
]

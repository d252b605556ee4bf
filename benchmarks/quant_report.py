"""Every quantization preset on a model, end to end: calibrate along the float sampling trajectory,
quantize, sample from the same noise, fidelity metrics and bytes — one table (markdown + JSON).

    python -m benchmarks.quant_report                         # every fixture model (CPU, ~minutes)
    python -m benchmarks.quant_report --model out/pixart-alpha --calib-prompts 4
    python -m benchmarks.quant_report --fixtures pixart_alpha_ms opensora_v1_0_stdit --out benchmarks/results/x

Rows per model: the presets of ``QuantConfig.preset`` (``xla`` backend), then three
mixed-precision rows on the ``viditq-w4a8`` base — the published Open-Sora 1.0 W4A8-MP plan
(timestep segments; its ``blocks_23`` rule has no layer in a 2-block fixture), a plan searched by the
metric-decoupled sensitivity sweep + greedy allocator at the published plan's average bits — and
``viditq-w4a8`` with one shared (m, H) for all cross-attention K/V projections (they all read
the caption), with the rotation time it saves per denoising step.

Metrics (:mod:`vidq_jax.eval.fidelity`) compare latents (no VAE here): final relative error, SQNR,
PSNR and SSIM vs the float sample; the mean per-step relative error along the trajectory; the
incoherence of the most imbalanced balanced layer at the first (noisiest) calibration step before
→ after balancing; param bytes (records count int payload + scales).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import REPO, environment, mark_toy, title

from models.families import family_of
from vidq_jax.calibration import collect, random_conditioning
from vidq_jax.pipeline import sampler_settings
from vidq_jax.eval.fidelity import fidelity_report
from vidq_jax.quant import PRESETS, QuantConfig, collect_stats, dense_paths, quantize_params
from vidq_jax.quant.config import SHARED_CAPTION_KV
from vidq_jax.quant.hadamard import hadamard_transform, random_signs
from vidq_jax.quant.plan import MixedPrecisionPlan
from vidq_jax.quant.sensitivity import allocate_bits, measure_sensitivity

DEFAULT_FIXTURES = ("pixart_alpha_ms", "pixart_sigma_ms", "opensora_v1_0_stdit", "opensora_v1_2_stdit3")
# Fixture sampling settings: the release samplers, with the step count of the MP tables for STDiT.
STEPS = 20


def _load(spec: str, n: int) -> tuple[str, Any, Any, dict, tuple, dict]:
    """``(name, model, params, cond, latent_shape, sampler_extra)`` of a fixture case or model folder."""
    folder = Path(spec)
    extra: dict[str, Any] = {}
    if (folder / "model.json").exists():
        from vidq_jax.checkpoint import load_model

        model, params, meta = load_model(folder)
        cond = random_conditioning(model, n)
        shape = tuple(model.init_inputs(batch=n)["x"].shape)
        name = folder.name
    else:
        from conversion import load_checkpoint
        from conversion.fixtures import find_cases, sampling_inputs

        case = next((c for c in find_cases() if c.name == spec), None)
        if case is None:
            raise SystemExit(f"quant_report: {spec!r} is neither a model folder nor a fixture case")
        model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest.get("config"))
        cond, shape = sampling_inputs(case, n)
        name = case.name
    if family_of(model).sampler.name == "rflow" and family_of(model).video:
        extra["num_frames"] = 51  # rflow resolution/length shift of a 2 s clip
    return name, model, params, cond, shape, extra


def _uncond(model, cond) -> dict | None:
    if family_of(model).null_caption_of(model) != "learned":  # T5("") stand-in for Σ/diffusers
        return {"y": np.zeros_like(np.asarray(cond["y"]))}
    return None


def _row(model_name: str, label: str, rep: dict, seconds: float, wa: str) -> dict:
    inc = rep.get("incoherence", {}).get("summary", {})
    return {
        "model": model_name,
        "preset": label,
        "bits": wa,
        "final_rel_error": rep["final_rel_error"],
        "final_sqnr_db": rep["final_sqnr_db"],
        "psnr_db": rep["psnr_db"],
        "ssim": rep["ssim"],
        "mean_step_rel_error": float(np.mean(rep["steps"]["rel_error"])),
        "bytes": rep["bytes"],
        "bytes_ratio": rep["float_bytes"] / rep["bytes"],
        "incoherence_worst_layer": inc.get("worst_layer"),
        "incoherence_before": inc.get("worst_max_before", [None])[0],
        "incoherence_after": inc.get("worst_max_after", [None])[0],
        "incoherence_mean_before": inc.get("mean_before", [None])[0],
        "incoherence_mean_after": inc.get("mean_after", [None])[0],
        "finite": rep["finite"],
        "seconds": seconds,
        "steps": rep["steps"],
    }


def _bits_label(cfg: QuantConfig, params: Any, plan: MixedPrecisionPlan | None = None) -> str:
    """``W<average weight bits>A<activation bits of the default>`` (FP when nothing is quantized)."""
    d = cfg.default
    if d is None:
        return "FP"
    avg = (plan or MixedPrecisionPlan("all-steps", 1, (0,), ())).average_bits(params, cfg)
    w = f"{avg:.0f}" if abs(avg - round(avg)) < 1e-9 else f"{avg:.2f}"
    return f"W{w}A{d.a_bits or 16}"


def rotation_saving(model, params, cond, n_consumers: int, reps: int = 50) -> dict[str, float]:
    """Time of one online rotation of the CFG caption batch ``y`` (after the caption embedder):
    sharing (m, H) over ``n_consumers`` K/V projections saves ``n_consumers − 1`` of them per step."""
    y = jnp.asarray(cond["y"])
    c = model.config.hidden_size
    x = jnp.ones((2 * y.shape[0], y.shape[1], c), jnp.float32)
    signs = random_signs(jax.random.key(0), c)
    f = jax.jit(lambda v: hadamard_transform(v, signs))
    f(x).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        f(x).block_until_ready()
    per = (time.perf_counter() - t0) / reps
    return {"rotation_us": per * 1e6, "saved_per_step_us": per * 1e6 * (n_consumers - 1), "consumers": n_consumers}


def run_model(spec: str, *, calib_prompts: int, every_k: int, presets: list[str], backend: str,
              budget_search: bool = True) -> tuple[list[dict], dict]:
    name, model, params, cond, shape, extra = _load(spec, calib_prompts)
    settings = sampler_settings(model, steps=STEPS)
    steps = settings["steps"]
    unc = _uncond(model, cond)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    calib = list(collect(model, params, cond, every_k_steps=every_k, latent_shape=shape[1:], uncond=unc, steps=steps,
                         noise_key=jax.random.PRNGKey(7), **extra))
    stats = collect_stats(model, params, calib)  # once per model, reused by every preset
    calib_s = time.perf_counter() - t0
    noise = jax.random.normal(jax.random.PRNGKey(0), shape)
    from vidq_jax import pipeline

    ref = pipeline.sample(model, params, noise, cond, unc, steps=steps, key=key, return_trajectory=True, **extra)
    kw = dict(steps=steps, key=key, **extra)
    rows = []
    for preset in presets:
        cfg = QuantConfig.preset(preset, backend=None if preset == "fp" else backend)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. viditq-w4a8-mp's blocks_27 rule on a 2-block fixture
            q = quantize_params(params, calib, model=model, config=cfg, stats=stats)
        rep = fidelity_report(model, params, q, noise, cond, unc, calib_batches=calib, reference=ref, **kw)
        rows.append(_row(name, preset, rep, time.perf_counter() - t0, _bits_label(cfg, params)))
        print(f"  {name:24s} {preset:18s} rel {rep['final_rel_error']:.4f}  SQNR {rep['final_sqnr_db']:6.2f} dB  "
              f"SSIM {rep['ssim']:.4f}  {rep['bytes']} B", flush=True)

    base = QuantConfig.preset("viditq-w4a8", backend=backend)
    extra_info: dict[str, Any] = {"calibration_s": calib_s, "calib_batches": len(calib), "steps": steps,
                                  "sampler": settings["sampler"], "guidance_scale": settings["guidance_scale"]}
    # published Open-Sora 1.0 W4A8-MP plan (timestep segments) and a searched plan at the same budget
    pub = MixedPrecisionPlan.opensora_v1_w4a8(num_steps=steps)
    plans = [("viditq-w4a8-mp-opensora1 (published)", pub)]
    if budget_search:
        t0 = time.perf_counter()
        sens = measure_sensitivity(model, params, calib, config=base, noise=noise, cond=cond, uncond=unc,
                                   num_steps=steps, boundaries=pub.boundaries, key=key, sample_fn=pipeline.sample, **extra)
        budget = pub.average_bits(params, base)
        searched = allocate_bits(sens, budget_bits=budget, name="searched-mp")
        extra_info["sensitivity_s"] = time.perf_counter() - t0
        extra_info["sensitivity"] = sens.to_dict()
        extra_info["searched_plan"] = searched.to_dict()
        plans.append((f"viditq-w4a8-mp-searched ({budget:.2f} b)", searched))
    for label, plan in plans:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize_params(params, calib, model=model, config=base, plan=plan, stats=stats)
        rep = fidelity_report(model, params, q, noise, cond, unc, calib_batches=calib, reference=ref, plan=plan, **kw)
        r = _row(name, label, rep, time.perf_counter() - t0, _bits_label(base, params, plan))
        rows.append(r)
        print(f"  {name:24s} {label:18s} rel {rep['final_rel_error']:.4f}  SQNR {rep['final_sqnr_db']:6.2f} dB", flush=True)
    # shared (m, H) over every cross-attention K/V (all read the caption y)
    shared_cfg = base.replace(name="viditq-w4a8+shared-kv", share_balance=(SHARED_CAPTION_KV,))
    t0 = time.perf_counter()
    q = quantize_params(params, calib, model=model, config=shared_cfg, stats=stats)
    rep = fidelity_report(model, params, q, noise, cond, unc, reference=ref, **kw)
    rows.append(_row(name, "viditq-w4a8+shared-kv", rep, time.perf_counter() - t0, _bits_label(shared_cfg, params)))
    n_kv = sum(1 for p in dense_paths(params) if shared_cfg.share_pattern(p))
    extra_info["shared_kv_rotation"] = rotation_saving(model, params, cond, n_kv)
    return rows, {name: extra_info}


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if np.isinf(v):
            return "inf"
        return f"{v:.{nd}g}"
    return str(v)


def to_markdown(rows: list[dict], info: dict, env: dict) -> str:
    lines = [
        "# " + title("Quantization report (CPU)", any(r.get("tiny") for r in rows), "fixture models"),
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}). Generated by "
        "`benchmarks/quant_report.py`; tiny random-weight fixture models (2 blocks), so the numbers test the "
        "pipeline and rank methods, they are not the paper's quality figures. Latent-space metrics vs the float "
        "sample from the same noise (no VAE). `inc.` = per-token max|x|/mean|x| of the most imbalanced balanced "
        "layer at the first (noisiest) calibration step, before → after smoothing + rotation. Mixed-precision rows: "
        "`bits` is the element- and step-weighted average weight width; `bytes` counts every variant a "
        "segment-switching layer keeps resident (W4 and W8), so they are larger than the average width suggests. "
        "The published Open-Sora 1.0 plan keeps every MLP at W8, which is ~50% of a fixture block's weights "
        "(mlp_ratio 4, no split q/k/v), hence its high average here.",
        "",
        "| model | preset | bits | rel. err | SQNR dB | PSNR dB | SSIM | mean step rel. err | bytes | × smaller | inc. before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        inc = "–" if r["incoherence_before"] is None else f"{r['incoherence_before']:.2f} → {r['incoherence_after']:.2f}"
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['bits']} | {_fmt(r['final_rel_error'])} | {_fmt(r['final_sqnr_db'], 3)} | "
            f"{_fmt(r['psnr_db'], 3)} | {_fmt(r['ssim'])} | {_fmt(r['mean_step_rel_error'])} | {r['bytes']} | "
            f"{r['bytes_ratio']:.2f} | {inc} |"
        )
    lines += ["", "## Per model", ""]
    for name, inf in info.items():
        rot = inf.get("shared_kv_rotation", {})
        lines.append(
            f"- **{name}**: {inf['sampler']} {inf['steps']} steps, CFG {inf['guidance_scale']}; {inf['calib_batches']} "
            f"calibration batches ({inf['calibration_s']:.1f} s)"
            + (f"; sensitivity sweep {inf['sensitivity_s']:.1f} s" if "sensitivity_s" in inf else "")
            + (f"; shared K/V (m, H): one rotation of the caption batch takes {rot['rotation_us']:.1f} µs, sharing over "
               f"{rot['consumers']} K/V projections saves {rot['saved_per_step_us']:.1f} µs per step" if rot else "")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="*", default=[], help="vidq-jax model folders (vidq convert output)")
    ap.add_argument("--fixtures", nargs="*", default=None, help=f"fixture cases (default {' '.join(DEFAULT_FIXTURES)})")
    ap.add_argument("--presets", nargs="*", default=sorted(PRESETS, key=list(PRESETS).index))
    ap.add_argument("--calib-prompts", type=int, default=2)
    ap.add_argument("--every-k", type=int, default=4)
    ap.add_argument("--backend", default="xla")
    ap.add_argument("--no-search", action="store_true", help="skip the sensitivity sweep")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quant_report_fixtures"))
    args = ap.parse_args(argv)
    specs = list(args.model) + list(DEFAULT_FIXTURES if args.fixtures is None and not args.model else args.fixtures or [])
    rows: list[dict] = []
    info: dict = {}
    t0 = time.perf_counter()
    for spec in specs:
        print(spec, flush=True)
        r, i = run_model(spec, calib_prompts=args.calib_prompts, every_k=args.every_k, presets=args.presets,
                         backend=args.backend, budget_search=not args.no_search)
        rows += mark_toy(r, not (Path(spec) / "model.json").exists())  # fixture cases are toy-size models
        info.update(i)
    env = environment()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows, "models": info,
                                                    "total_s": time.perf_counter() - t0}, indent=1, default=float))
    out.with_suffix(".md").write_text(to_markdown(rows, info, env))
    print(f"wrote {out.with_suffix('.md')} and .json ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

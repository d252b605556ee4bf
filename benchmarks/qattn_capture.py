"""Quantized attention vs float attention on q, k, v captured from the bundled models (issue 14).

    python -m benchmarks.qattn_capture                            # the three bundled models (2-core CPU ~2 min)
    python -m benchmarks.qattn_capture --models t2v --prompts 4   # more prompts of one model
    python -m benchmarks.qattn_capture --backend pallas --out benchmarks/results/quality_qattn_capture_gpu  # kernels
    python -m benchmarks.qattn_capture --models /tmp/t2i/model --tiny --out /tmp/qc   # a stand-in folder

Per model (:mod:`vidq_jax.bundled`, sampler settings from its ``model.json``):

* the float model samples ``--prompts`` demo prompts (class-conditional: trained class labels) from
  noise seed 0 with its own sampler; the model inputs of every ``steps // 5``-th step, both CFG halves,
  are recorded as calibration does (:meth:`vidq_jax.bundled.DemoModel.collect_calibration`);
* one forward pass per recorded step captures ``q, k, v`` (and the key mask) of EVERY attention call —
  spatial self (``"self"``), cross (``"cross"``) and temporal (``"temporal"``) — at the attention seam
  (:func:`capture_attention`: a per-kind implementation that records its inputs, the module path from
  ``flax.linen.intercept_methods``);
* each capture runs through the quantized-attention record of each preset
  (:class:`vidq_jax.quant.attention.QuantizedAttention` on the ``xla`` backend = the jnp reference
  ``pallas_kernels.quant_attention_ref`` with the kernel's tiling, which defines the kernels' numerics)
  and through the float attention the model itself runs (:mod:`models.attention` references, float32);
  the presets quantize only spatial self-attention, the other kinds are measured with the same settings;
* metrics per (sample row, head) — over all tokens and channels of one head of one batch row (CFG rows
  count as samples; temporal: all frames of all positions) — cosine similarity and relative L2
  ``‖o_q − o‖ / ‖o‖``; per model, layer kind and preset: min / 1st percentile / mean over
  layers × timesteps × samples × heads. Issue 14 target: cosine ≥ 0.999.

``--backend pallas`` runs the records' kernels instead of the reference (on a GPU; elsewhere the reference).
Writes ``benchmarks/results/quality_qattn_capture.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from benchmarks.common import title

PRESETS: tuple[str, ...] = ("viditq-w8a8-qattn", "viditq-w8a8-qattn-fp8pv")
PROMPTS = {"t2i": 4, "t2v": 2, "c2i": 9}  # c2i: one per trained class of the emoji DiT
TINY_PROMPTS = {"t2i": 1, "t2v": 1, "c2i": 1}
TARGET_COS = 0.999
EVAL_SEED = 0
KIND_NAME = {"self": "spatial self", "cross": "cross", "temporal": "temporal"}


# ------------------------------------------------------------------------------------------------
# capture and compare
# ------------------------------------------------------------------------------------------------


def capture_attention(model) -> tuple[Any, list[tuple[str, str]]]:
    """``(f, calls)``: jitted ``f(params, batch) -> [(q, k, v, key_mask), ...]``, the inputs of every
    attention call of one forward pass ``model.apply({"params": params}, **batch)`` in call order, and
    ``calls``: the ``(module path, kind)`` of each (filled when ``f`` is traced). ``params`` must be
    float (a per-layer attention record bypasses the seam's per-kind implementations)."""
    import flax.linen as nn

    from models import attention as seam

    calls: list[tuple[str, str]] = []

    def forward(params, batch):
        captured: list[tuple] = []
        calls.clear()
        stack: list[str] = []

        def interceptor(next_fun, args, kwargs, context):
            stack.append("/".join(context.module.path))
            try:
                return next_fun(*args, **kwargs)
            finally:
                stack.pop()

        def recorder(kind: str, impl):
            def fn(q, k, v, key_mask=None):
                calls.append((stack[-1] if stack else "", kind))
                captured.append((q, k, v, key_mask))
                return impl(q, k, v) if kind == "temporal" else impl(q, k, v, key_mask)
            return fn

        before = {kind: seam.implementation(kind) for kind in seam.KINDS}
        try:
            for kind, impl in before.items():
                seam.register(kind, recorder(kind, impl))
            with nn.intercept_methods(interceptor):
                model.apply({"params": params}, **batch)
        finally:
            for kind in seam.KINDS:
                seam.register(kind, before[kind] if before[kind] not in (seam.reference_attention,
                                                                         seam.reference_frame_attention) else None)
        return captured

    return jax.jit(forward), calls


def attention_setting(model, params, preset: str, backend: str = "xla"):
    """The :class:`~vidq_jax.quant.attention.QuantizedAttention` record ``preset`` writes for ``model``'s
    attention (on ``backend``; ``xla``: the jnp reference) and the module paths it quantizes; ValueError
    naming the preset when it quantizes no attention or gives layers different settings."""
    from vidq_jax.quant import QuantConfig, dense_paths
    from vidq_jax.quant.attention import attention_records

    cfg = QuantConfig.preset(preset, model=model, paths=dense_paths(params))
    records = attention_records(params, cfg)
    settings = {rec.with_backend(backend) for rec in records.values()}
    if len(settings) != 1:
        raise ValueError(f"preset {preset!r}: {len(settings)} distinct quantized-attention settings on "
                         f"{type(model).__name__}; choose a preset with attn_bits=8 rules (e.g. {PRESETS[0]!r})")
    return settings.pop(), sorted(records)


def head_metrics(out: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(cosine, relative L2)`` of ``out`` vs ``ref`` per (batch row, head): arrays ``(B, H)`` over every
    other axis (heads are axis ``-2`` in every seam layout), in float64."""
    a = np.asarray(out, np.float64)
    b = np.asarray(ref, np.float64)
    a, b = np.moveaxis(a, -2, 1), np.moveaxis(b, -2, 1)
    a, b = a.reshape(a.shape[0], a.shape[1], -1), b.reshape(b.shape[0], b.shape[1], -1)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cos = np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-300)
    rel = np.linalg.norm(a - b, axis=-1) / np.maximum(nb, 1e-300)
    return cos, rel


def compare_call(record, q, k, v, key_mask, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`head_metrics` of ``record``'s attention vs the float attention the model runs (the
    :mod:`models.attention` references in float32, full-precision matmuls)."""
    from models import attention as seam

    with jax.default_matmul_precision("float32"):
        if kind == "temporal":
            ref = seam.reference_frame_attention(q, k, v)
        else:
            ref = seam.reference_attention(q, k, v, key_mask)
        out = record.attend(q, k, v, key_mask, kind=kind)
    return head_metrics(out, ref)


def measure(model, params, batches: Sequence[Any], presets: Sequence[str] = PRESETS, *, backend: str = "xla",
            progress: bool | None = None) -> dict[str, Any]:
    """Capture every attention call of ``model`` on each calibration batch (``CalibBatch`` or a dict of
    model inputs) and compare each preset's quantized attention (records on ``backend``: ``xla`` = the jnp
    reference, ``pallas`` = the kernels on a GPU) with float attention. Returns
    ``{"records": [...], "settings": {preset: ...}, "quantized_layers": {preset: [...]}}``, one record per
    (preset, layer, batch): ``preset, layer, kind, step, timestep, shape, cos (B, H), rel (B, H)``."""
    from tqdm.auto import tqdm

    from vidq_jax.bundled import upcast_bf16

    params = upcast_bf16(params)
    settings = {p: attention_setting(model, params, p, backend) for p in presets}
    fn, calls = capture_attention(model)
    out: list[dict[str, Any]] = []
    bar = tqdm(batches, desc=f"capture {type(model).__name__}", unit="step", disable=progress is False
               if progress is not None else None, dynamic_ncols=True)
    for i, b in enumerate(bar):
        batch = getattr(b, "batch", b)
        step = getattr(b, "step", i)
        t = getattr(b, "timestep", None)
        if t is None:
            t = float(np.asarray(batch["timestep"]).reshape(-1)[0])
        captured = fn(params, batch)
        for (layer, kind), (q, k, v, mask) in zip(calls, captured):
            for preset, (rec, _) in settings.items():
                cos, rel = compare_call(rec, q, k, v, mask, kind)
                out.append({"preset": preset, "layer": layer, "kind": kind, "step": int(step), "timestep": float(t),
                            "shape": list(q.shape), "cos": cos, "rel": rel})
    return {"records": out, "settings": {p: s.describe() for p, (s, _) in settings.items()},
            "quantized_layers": {p: layers for p, (_, layers) in settings.items()}}


def _stats(recs: list[dict]) -> dict[str, Any]:
    cos = np.concatenate([r["cos"].ravel() for r in recs])
    rel = np.concatenate([r["rel"].ravel() for r in recs])
    worst = min(recs, key=lambda r: float(r["cos"].min()))
    return {"n": int(cos.size), "cos_min": float(cos.min()), "cos_p1": float(np.percentile(cos, 1)),
            "cos_mean": float(cos.mean()), "rel_l2_mean": float(rel.mean()), "rel_l2_max": float(rel.max()),
            "worst_layer": worst["layer"], "worst_step": worst["step"], "worst_timestep": worst["timestep"]}


def summarize(measured: dict[str, Any], model_name: str) -> tuple[list[dict], list[dict]]:
    """``(rows, detail)``: rows per (layer kind, preset) with :func:`_stats` and the number of layers and
    timesteps; detail per (preset, layer, step): min / mean cosine, mean / max relative L2."""
    recs = measured["records"]
    rows = []
    for kind in ("self", "cross", "temporal"):
        for preset in measured["settings"]:
            sel = [r for r in recs if r["kind"] == kind and r["preset"] == preset]
            if not sel:
                continue
            layers = sorted({r["layer"] for r in sel})
            rows.append({"model": model_name, "kind": kind, "preset": preset, "setting": measured["settings"][preset],
                         "layers": len(layers), "timesteps": len({r["step"] for r in sel}),
                         "quantized_by_preset": sum(ly in measured["quantized_layers"][preset] for ly in layers),
                         "rows_per_call": int(sel[0]["cos"].shape[0]), "heads": int(sel[0]["cos"].shape[1]),
                         **_stats(sel), "meets_target": bool(min(float(r["cos"].min()) for r in sel) >= TARGET_COS)})
    detail = [{"model": model_name, "preset": r["preset"], "layer": r["layer"], "kind": r["kind"], "step": r["step"],
               "timestep": r["timestep"], "shape": r["shape"], "cos_min": float(r["cos"].min()),
               "cos_mean": float(r["cos"].mean()), "rel_l2_mean": float(r["rel"].mean()),
               "rel_l2_max": float(r["rel"].max())} for r in recs]
    return rows, detail


# ------------------------------------------------------------------------------------------------
# the bundled models
# ------------------------------------------------------------------------------------------------


def run_model(spec: str, *, prompts: int | None, tiny: bool, models_dir: str | None = None,
              presets: Sequence[str] = PRESETS, backend: str = "xla") -> tuple[list[dict], dict]:
    """Rows and the model description of one model (see the module docstring), its ``"layers"``: the
    per-(preset, layer, step) detail of :func:`summarize`."""
    from vidq_jax.bundled import load_demo_model

    t0 = time.perf_counter()
    dm = load_demo_model(spec, models_dir=models_dir)
    n = prompts or (TINY_PROMPTS if tiny else PROMPTS)[dm.task]
    chosen = dm.demo_prompts(min(n, len(dm.default_prompts())))
    batches = dm.collect_calibration(dm.condition(chosen.y, chosen.mask), key=jax.random.PRNGKey(EVAL_SEED))
    if tiny:
        batches = batches[:2]
    sample_s = time.perf_counter() - t0
    measured = measure(dm.model, dm.params, batches, presets, backend=backend)
    rows, detail = summarize(measured, dm.name)
    s = dm.sampler
    info = {"folder": str(dm.folder), "model": type(dm.model).__name__, "task": dm.task,
            "config": dm.model.config.to_dict(), "sampler": s, "prompts": chosen.texts,
            "cfg_rows": int(np.asarray(batches[0].batch["timestep"]).shape[0]),
            "steps": [b.step for b in batches], "timesteps": [float(b.timestep) for b in batches],
            "noise_seed": EVAL_SEED, "settings": measured["settings"], "quantized_layers": measured["quantized_layers"],
            "sample_s": sample_s, "seconds": time.perf_counter() - t0, "layers": detail}
    for r in rows:
        print(f"  {dm.name:22s} {KIND_NAME[r['kind']]:13s} {r['preset']:24s} cos min {r['cos_min']:.5f} "
              f"p1 {r['cos_p1']:.5f} mean {r['cos_mean']:.6f}  rel L2 {r['rel_l2_mean']:.4f}", flush=True)
    return rows, {dm.name: info}


def to_markdown(rows: list[dict], models: dict, env: dict, total_s: float) -> str:
    lines = [
        "# " + title("Quantized attention vs float attention on activations captured from the bundled models",
                     bool(env.get("tiny"))),
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}, {env['cpu_count']} CPU cores), "
        f"generated by `benchmarks/qattn_capture.py` in {total_s / 60:.1f} min. Issue 14 target: cosine ≥ {TARGET_COS}.",
        "",
        "q, k, v (and the caption key mask) of every attention call of the FLOAT model, captured at the attention "
        "seam on the model inputs of every `steps // 5`-th step of its own sampler (both CFG halves), run through "
        f"each preset's quantized-attention record on the `{env['backend']}` backend ("
        + ("the jnp reference `pallas_kernels.quant_attention_ref` with the kernel's tiling (Q-mean blocks of 128 "
           "queries, key blocks of 64), which the GPU kernels match at cos 0.99996 "
           "(`kernel_check_gpu_h100_s7_2026-12-06.log`)" if env["backend"] == "xla" or env["platform"] == "cpu" else
           "the Pallas kernels; temporal attention runs the reference in every backend")
        + ") — and compared with the float32 attention the model runs. Cosine and relative L2 (‖o_q − o‖ / ‖o‖) per (sample row, head) "
        "over all tokens × channels; min / p1 / mean over layers × timesteps × sample rows (prompts × 2 CFG halves) "
        "× heads (n). The presets quantize spatial self-attention only; cross and temporal attention are measured "
        "with the same settings (what quantizing them would cost).",
        "",
    ]
    for name, info in models.items():
        s = info["sampler"]
        lines += [
            f"## {name} ({info['model']}, {info['task']})",
            "",
            f"- sampler {s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}; {len(info['prompts'])} "
            f"{'class labels' if info['task'] == 'c2i' else 'prompts'} ({', '.join(info['prompts'][:6])}{', …' if len(info['prompts']) > 6 else ''}), noise "
            f"seed {info['noise_seed']}, {info['cfg_rows']} rows per call",
            f"- captured at steps {info['steps']} (model timesteps "
            f"{', '.join(f'{t:.0f}' for t in info['timesteps'])})",
            *[f"- `{p}`: {d}" for p, d in info["settings"].items()],
            "",
            "| kind | preset | layers (quantized by preset) | n | cos min | cos p1 | cos mean | rel L2 mean | rel L2 max "
            f"| min ≥ {TARGET_COS} | worst at |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["model"] == name):
            lines.append(
                f"| {KIND_NAME[r['kind']]} | `{r['preset']}` | {r['layers']} ({r['quantized_by_preset']}) | {r['n']} | "
                f"{r['cos_min']:.5f} | {r['cos_p1']:.5f} | {r['cos_mean']:.6f} | {r['rel_l2_mean']:.4f} | "
                f"{r['rel_l2_max']:.4f} | {'yes' if r['meets_target'] else '**no**'} | {r['worst_layer']} step "
                f"{r['worst_step']} (t={r['worst_timestep']:.0f}) |")
        lines += ["", "Min cosine per captured step (over layers, sample rows and heads):", ""]
        mine = info["layers"]
        cols = [(k, p) for k in ("self", "cross", "temporal") for p in info["settings"]
                if any(d["kind"] == k and d["preset"] == p for d in mine)]
        lines += ["| step (t) | " + " | ".join(f"{KIND_NAME[k]} `{p}`" for k, p in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for step, t in zip(info["steps"], info["timesteps"]):
            cells = [min((d["cos_min"] for d in mine if d["step"] == step and d["kind"] == k and d["preset"] == p),
                         default=float("nan")) for k, p in cols]
            lines.append(f"| {step} ({t:.0f}) | " + " | ".join(f"{c:.5f}" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.quality import add_model_args, run_and_write

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS),
                    help=f"presets with quantized attention (default {' '.join(PRESETS)})")
    ap.add_argument("--prompts", type=int, help="prompts (class-conditional: classes) per model (default "
                    + ", ".join(f"{k} {v}" for k, v in PROMPTS.items()) + ")")
    ap.add_argument("--tiny", action="store_true", help="one prompt, two captured steps (smoke run)")
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality_qattn_capture)")
    ap.add_argument("--backend", default="xla", choices=["xla", "pallas"],
                    help="backend of the attention records: xla = the jnp reference that defines the kernels' "
                    "numerics (default), pallas = the kernels (GPU; the reference elsewhere)")
    args = ap.parse_args(argv)
    return run_and_write(args, lambda spec: run_model(spec, prompts=args.prompts, tiny=args.tiny,
                                                      models_dir=args.models_dir, presets=args.presets,
                                                      backend=args.backend),
                         "quality_qattn_capture", to_markdown, time.perf_counter())


if __name__ == "__main__":
    raise SystemExit(main())

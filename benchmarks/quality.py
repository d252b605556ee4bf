"""Sample quality of every quantization preset on the bundled trained models (issues 6, 15).

    python -m benchmarks.quality                                  # the bundled models, every preset (CPU ~30 min)
    python -m benchmarks.quality --images 64 --videos 32 --per-class 8   # the larger sample sets (GPU)
    python -m benchmarks.quality --models /tmp/t2i/model --tiny --presets fp viditq-w8a8 --out /tmp/q

Per model (:mod:`vidq_jax.bundled`; sampler settings from its ``model.json``):

* calibration: float trajectories of a few demo prompts from their OWN noise (``collect``; every
  ``steps // 5``-th step, both CFG halves), activation statistics collected once for all presets;
* evaluation set: ``--images`` captions of ``assets/t2i_eval.npz`` (emoji names with their category)
  or ``--videos`` captions of ``assets/t2v_prompts.npz`` (animal × direction), evenly spread over
  the bank; for a class-conditional model (``c2i``: the emoji DiT) ``--per-class`` samples of every
  class label it was trained on; sampled from the same noise by the float model and by every preset;
* metrics: PSNR / SSIM vs the float samples; Fréchet distance to the real data's feature statistics
  (``assets/feature_nets/<net>/real_stats.npz``) and conditional accuracy from the shipped feature
  network (the DiT's class labels are the emoji feature network's categories); temporal consistency and motion accuracy for video; weight bytes (vs the bf16 export);
  per-layer incoherence (per-token ``max|x| / mean|x|`` of each balanced layer's input on the
  calibration batches, 3 of their timesteps) before and after the preset's balancing
  (:mod:`vidq_jax.eval.fidelity`).

Writes ``benchmarks/results/quality.{json,md}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import REPO, environment, mark_toy, results_path, title

from benchmarks.quant_report import _bits_label, _fmt
from vidq_jax.bundled import TASK_TITLE, load_demo_model, load_prompts, spread, upcast_bf16, weight_bytes
from vidq_jax.eval.fidelity import incoherence_by_timestep
from vidq_jax.eval.quality import feature_metrics, fidelity_metrics
from vidq_jax.quant import PRESETS, collect_stats

EVAL_BANK = {"t2i": "t2i_eval", "t2v": "t2v_prompts", "c2i": None}  # c2i: the model's trained class labels
COUNTS = {"t2i": 32, "t2v": 4, "c2i": 1}  # c2i: samples per class; t2i + t2v fit ~20 min on a 2-core CPU
TINY_COUNTS = {"t2i": 4, "t2v": 2, "c2i": 1}
# samples per sampler call (one compile per preset); small batches are fastest per sample on a CPU
CHUNK = {"cpu": {"t2i": 4, "t2v": 1, "c2i": 9}, "gpu": {"t2i": 64, "t2v": 8, "c2i": 72}}
CALIB_PROMPTS = {"t2i": 4, "t2v": 2, "c2i": 3}
INCOHERENCE_TIMESTEPS = 3  # of the calibration timesteps
EVAL_SEED, CALIB_SEED = 0, 7


def sample_set(dm, params, cond: dict, noise: jax.Array, chunk: int, *, trajectory: bool = False):
    """Samples of every row of ``cond``/``noise`` in calls of ``chunk`` rows (the last one padded,
    so every call has the same shapes: one compile). ``trajectory``: ``(samples, trajectory)`` with the
    latent after every step of every row, ``(steps, rows, ...)`` (``return_trajectory`` of the sampler)."""
    n = int(noise.shape[0])
    chunk = min(chunk, n)
    params = upcast_bf16(params)  # once, not per call
    outs, trajs = [], []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n  # pad the last call with the first rows
        part = {k: v[idx] for k, v in cond.items()}
        keep = min(chunk, n - start)
        out = dm.sample(params, noise[idx], part, return_trajectory=trajectory)
        if trajectory:
            out, traj = out
            trajs.append(traj[:, :keep])
        outs.append(dm.to_pixels(out)[:keep])
    x = np.concatenate(outs)
    return (x, jnp.concatenate(trajs, axis=1)) if trajectory else x


def _balance_key(dm, preset: str) -> tuple:
    """What determines a preset's balancing transforms (weights, statistics and seed being equal):
    the balanced layers with their smoothing strength and rotation (online or folded, `fold_heads`)."""
    from vidq_jax.quant import dense_paths

    cfg = dm.quant_config(preset)
    return tuple((p, lq.smooth_alpha, lq.rotate, lq.fold_heads) for p in dense_paths(dm.params)
                 if (lq := cfg.resolve(p)) is not None and (lq.smooth_alpha is not None or lq.rotate))


def _incoherence(dm, q, calib) -> dict[str, Any]:
    """Per-layer incoherence before / after balancing at INCOHERENCE_TIMESTEPS of the calibration
    timesteps (spread from the noisiest to the last), averaged over them."""
    steps = sorted({b.step for b in calib})
    keep = {steps[i] for i in spread(len(steps), min(INCOHERENCE_TIMESTEPS, len(steps)))}
    inc = incoherence_by_timestep(dm.model, dm.compute_params, q, [b for b in calib if b.step in keep])
    layers = {p: {"before": float(np.mean(v["mean_before"])), "after": float(np.mean(v["mean_after"])),
                  "max_before": float(np.max(v["max_before"])), "max_after": float(np.max(v["max_after"]))}
              for p, v in inc["layers"].items()}
    summ = inc["summary"]
    out = {"layers": layers}
    if layers:
        out.update({
            "mean_before": float(np.mean([v["before"] for v in layers.values()])),
            "mean_after": float(np.mean([v["after"] for v in layers.values()])),
            "worst_layer": summ["worst_layer"],
            "worst_max_before": float(np.max(summ["worst_max_before"])),
            "worst_max_after": float(np.max(summ["worst_max_after"])),
        })
    return out


@dataclasses.dataclass
class EvalSetup:
    """Everything a preset is evaluated against on one model: the evaluation prompts and noise, the
    feature network with the real-data statistics, and the calibration batches with their statistics
    (collected once for every preset). Built by :func:`prepare`; :meth:`reseeded` swaps the noise."""

    dm: Any
    prompts: Any
    cond: dict
    noise: jax.Array
    eval_seed: int
    chunk: int
    extractor: Any
    real_stats: Any
    calib_prompts: Any
    calib: list
    stats: dict
    calib_s: float

    def reseeded(self, seed: int) -> "EvalSetup":
        """Same prompts and calibration, evaluation noise from ``seed``."""
        return dataclasses.replace(self, noise=self.dm.noise(len(self.prompts), jax.random.PRNGKey(seed)),
                                   eval_seed=seed)


def prepare(spec: str, *, counts: dict[str, int | None], tiny: bool = False, models_dir: str | None = None,
            eval_seed: int = EVAL_SEED) -> EvalSetup:
    """Load ``spec``, pick the evaluation prompts / noise and run the calibration (see module docstring)."""
    dm = load_demo_model(spec, models_dir=models_dir)
    task = dm.task
    n = counts.get(task) or (TINY_COUNTS if tiny else COUNTS)[task]
    chunk = CHUNK["cpu" if jax.default_backend() == "cpu" else "gpu"][task]
    if dm.is_class_conditional:  # n samples of every trained class label
        prompts = dm.class_prompts(np.repeat(dm.trained_classes, n))
    else:
        bank = load_prompts(EVAL_BANK[task])
        prompts = bank.take(spread(len(bank), n))
    cond = dm.condition(prompts.y, prompts.mask)
    noise = dm.noise(len(prompts), jax.random.PRNGKey(eval_seed))
    extractor, real_stats = dm.reference()

    demo = dm.default_prompts()  # calibration prompts: demo prompts outside the evaluation set if possible
    pool = [i for i, t in enumerate(demo.texts) if t not in set(prompts.texts)] or list(range(len(demo)))
    calib_prompts = demo.take([pool[i] for i in spread(len(pool), min(CALIB_PROMPTS[task], len(pool)))])
    t0 = time.perf_counter()
    calib = dm.collect_calibration(dm.condition(calib_prompts.y, calib_prompts.mask), key=jax.random.PRNGKey(CALIB_SEED))
    stats = collect_stats(dm.model, dm.compute_params, calib)
    return EvalSetup(dm, prompts, cond, noise, eval_seed, chunk, extractor, real_stats, calib_prompts, calib, stats,
                     time.perf_counter() - t0)


def evaluate(setup: EvalSetup, params: Any, reference: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
    """``(samples, metrics)`` of ``params`` on the setup's prompts and noise: PSNR / SSIM vs
    ``reference`` (``None``: these samples are the reference), FD / accuracy (/ motion, temporal)
    from the feature network, ``finite``, ``sample_s``, ``feature_dim``."""
    t0 = time.perf_counter()
    x = sample_set(setup.dm, params, setup.cond, setup.noise, setup.chunk)
    return x, score(setup, x, reference, time.perf_counter() - t0)


def score(setup: EvalSetup, x: np.ndarray, reference: np.ndarray | None, sample_s: float) -> dict[str, Any]:
    """The metrics of :func:`evaluate` of samples ``x`` (the setup's rows) that took ``sample_s`` seconds."""
    feats = setup.extractor(x)
    ref = x if reference is None else reference
    metrics = {
        **{k: v for k, v in fidelity_metrics(x, ref).items() if k != "mse"},
        **feature_metrics(feats, setup.prompts.labels, setup.prompts.directions, setup.real_stats),
        "finite": bool(np.isfinite(x).all()),
        "sample_s": sample_s,
        "feature_dim": int(feats["features"].shape[-1]),
    }
    return metrics


def run_model(spec: str, *, presets: list[str], counts: dict[str, int | None], tiny: bool, backend: str,
              models_dir: str | None = None) -> tuple[list[dict], dict]:
    """Rows of every preset (``presets[0]`` must be ``"fp"``: the reference) on one model."""
    if presets[0] != "fp":
        raise ValueError("the first preset must be 'fp' (the reference of PSNR / SSIM)")
    t_model = time.perf_counter()
    setup = prepare(spec, counts=counts, tiny=tiny, models_dir=models_dir)
    dm, calib, stats, task = setup.dm, setup.calib, setup.stats, setup.dm.task

    fp_bytes = weight_bytes(dm.params)
    fp_samples = None
    feature_dim = None
    incoherence: dict[tuple, tuple[str, dict]] = {}
    rows: list[dict] = []
    for preset in presets:
        t0 = time.perf_counter()
        q = jax.block_until_ready(dm.quantize(preset, calib, backend=backend, stats=stats))
        quantize_s = time.perf_counter() - t0
        x, metrics = evaluate(setup, q, fp_samples)
        fp_samples = x if fp_samples is None else fp_samples
        feature_dim = metrics.pop("feature_dim")
        sample_s = metrics.pop("sample_s")
        finite = metrics.pop("finite")
        row: dict[str, Any] = {
            "model": dm.name, "task": task, "preset": preset,
            "bits": _bits_label(dm.quant_config(preset, backend), dm.params),
            "avg_w_bits": dm.average_weight_bits(preset),
            "bytes": weight_bytes(q), "x_smaller": fp_bytes / weight_bytes(q),
            **metrics,
            "finite": finite,
            "quantize_s": quantize_s, "sample_s": sample_s,
        }
        t0 = time.perf_counter()
        key = _balance_key(dm, preset)
        if key not in incoherence:  # presets balancing alike (e.g. W8 and W4 of one method) share it
            incoherence[key] = (preset, _incoherence(dm, q, calib))
        row["incoherence_of"], row["incoherence"] = incoherence[key]
        row["incoherence_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {dm.name:22s} {preset:18s} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}  FD {row['fd']:8.3f}  "
              f"acc {row['cond_acc']:.3f}  {row['bytes']} B  [{quantize_s + sample_s:.0f} s]", flush=True)
    info = {
        **setup_info(setup),
        "arch": dm.name, "float_bytes": fp_bytes, "feature_dim": feature_dim,
        "seconds": time.perf_counter() - t_model,
    }
    return rows, {dm.name: info}


def setup_info(setup: EvalSetup) -> dict[str, Any]:
    """JSON description of a setup: model, sampler, evaluation prompts and seed, calibration."""
    dm = setup.dm
    return {
        "folder": str(dm.folder), "model": type(dm.model).__name__,
        "config": dm.model.config.to_dict(), "sampler": dm.sampler,
        "samples": len(setup.prompts), "eval_bank": EVAL_BANK[dm.task], "prompts": setup.prompts.texts,
        "task": dm.task,
        "calibration": {"prompts": setup.calib_prompts.texts, "every_k_steps": dm.calib_every_k,
                        "batches": len(setup.calib), "seconds": setup.calib_s, "noise_seed": CALIB_SEED},
        "eval_noise_seed": setup.eval_seed,
        "train_record": {k: dm.meta.get("train_record", {}).get(k) for k in ("steps", "final_loss", "device", "train_s")},
    }


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _ranking(rows: list[dict]) -> list[str]:
    """Which preset is closest to FP (PSNR) and best in FD, per weight width class."""
    out = []
    def a8(r):
        return r["bits"].endswith("A8")

    for cls, pred in (("W8A8", lambda r: a8(r) and r["avg_w_bits"] == 8),
                      ("W4A8 and W4A8 mixed precision", lambda r: a8(r) and r["avg_w_bits"] < 8)):
        group = [r for r in rows if pred(r)]
        if len(group) < 2:
            continue
        by_psnr = sorted(group, key=lambda r: -r["psnr"])
        by_fd = sorted(group, key=lambda r: r["fd"])
        out.append(f"  - {cls}: by PSNR vs FP " + " > ".join(f"`{r['preset']}`" for r in by_psnr)
                   + "; by FD " + " < ".join(f"`{r['preset']}`" for r in by_fd))
    return out


def describe_eval_set(info: dict) -> str:
    """Where a model's evaluation samples come from (markdown)."""
    if info.get("eval_bank") is None:  # class-conditional
        names = list(dict.fromkeys(info["prompts"]))
        return (f"{info['samples']} samples: {info['samples'] // max(len(names), 1)} per class label of the "
                f"{len(names)} trained classes ({', '.join(names)})")
    return f"{info['samples']} samples: captions of `assets/{info['eval_bank']}.npz` spread over the bank"


def to_markdown(rows: list[dict], models: dict, env: dict, total_s: float) -> str:
    lines = [
        "# " + title("Quality of every quantization preset on the bundled trained models", bool(env.get("tiny"))),
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}, {env['cpu_count']} CPU cores), "
        f"`{env['backend']}` backend; generated by `benchmarks/quality.py` in {total_s / 60:.1f} min.",
        "",
        "Every preset samples the same prompts from the same noise as the float model (FP, bf16 weights as shipped, "
        "float32 math). PSNR / SSIM: vs the FP samples (pixels in [-1, 1]). FD: Fréchet distance between the "
        "feature-network features of the samples and of the real data (lower is better); with fewer samples than "
        "feature dimensions the covariance estimate is rank-deficient and FD is biased upward, so compare FD across "
        "rows of one model (same N), not with other benchmarks. Acc.: the feature network's class = the caption's "
        "(emoji category / animal) or the class label's (DiT); motion: the predicted direction = the caption's. Bytes: all weights "
        "(quantized records: int payload + scales), × smaller vs the bf16 export. Incoherence: per-token "
        "max|x| / mean|x| of each balanced layer's input on the calibration batches, mean over layers, before → "
        "after the preset's smoothing / rotation (ViDiT-Q: 40.75 → 5.02 on its example layer).",
        "",
    ]
    for name, info in models.items():
        mrows = [r for r in rows if r["model"] == name]
        video = mrows[0]["task"] == "t2v"
        s = info["sampler"]
        tr = info["train_record"]
        lines += [
            f"## {name} ({TASK_TITLE[mrows[0]['task']]})",
            "",
            f"- {info['model']} (hidden {info['config']['hidden_size']}, depth {info['config']['depth']}), "
            f"{info['float_bytes'] / 2**20:.2f} MiB bf16; trained {tr.get('steps')} steps (final loss "
            f"{_fmt(tr.get('final_loss'))}) on {tr.get('device')}; sampler {s['sampler']} {s['steps']} steps, CFG "
            f"{s['guidance_scale']:g}",
            f"- {describe_eval_set(info)}, noise seed {info['eval_noise_seed']}; feature dim {info['feature_dim']}",
            f"- calibration: {len(info['calibration']['prompts'])} demo prompts, own noise (seed "
            f"{info['calibration']['noise_seed']}), every {info['calibration']['every_k_steps']}-th step: "
            f"{info['calibration']['batches']} batches ({info['calibration']['seconds']:.0f} s); incoherence at "
            f"{INCOHERENCE_TIMESTEPS} of their timesteps",
            "",
        ]
        head = ["preset", "bits", "avg W bits", "bytes", "× smaller", "PSNR dB", "SSIM", "FD", "acc."]
        if video:
            head += ["motion", "temporal"]
        head += ["incoherence before → after", "quantize + sample s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mrows:
            inc = r["incoherence"]
            inc_s = f"{inc['mean_before']:.2f} → {inc['mean_after']:.2f}" if "mean_before" in inc else "–"
            cells = [f"`{r['preset']}`", r["bits"], _fmt(r["avg_w_bits"], 3), str(r["bytes"]), f"{r['x_smaller']:.2f}",
                     f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['fd']:.3f}", f"{r['cond_acc']:.3f}"]
            if video:
                cells += [_fmt(r.get("motion_acc"), 3), _fmt(r.get("temporal_consistency"), 4)]
            cells += [inc_s, f"{r['quantize_s'] + r['sample_s']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "- ordering:", *_ranking(mrows), ""]
        groups: dict[str, list[str]] = {}  # presets sharing one balancing -> one column
        for r in mrows:
            if r["incoherence"]["layers"]:
                groups.setdefault(r["incoherence_of"], []).append(r["preset"])
        if groups:
            inc = {g: next(r["incoherence"]["layers"] for r in mrows if r["preset"] == g) for g in groups}
            layers = sorted({p for v in inc.values() for p in v})
            lines += [
                "Per-layer incoherence (mean per-token max|x|/mean|x| over the calibration batches) before and after "
                "each balancing (presets that balance alike share a column); `–`: not balanced by those presets.",
                "",
                "| layer | before | " + " | ".join(" / ".join(f"`{p}`" for p in ps) for ps in groups.values()) + " |",
                "|---|---|" + "---|" * len(groups),
            ]
            for p in layers:
                before = next(v[p]["before"] for v in inc.values() if p in v)
                cells = [_fmt(inc[g].get(p, {}).get("after"), 4) for g in groups]
                lines.append(f"| {p} | {before:.2f} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """``--models`` / ``--models-dir``: which trained models a quality script scores."""
    ap.add_argument("--models", nargs="+", default=["t2i", "t2v", "c2i"],
                    help="t2i / t2v / c2i (bundled) or model folders written by vidq_jax.train (default: all three)")
    ap.add_argument("--models-dir", help="folder holding the bundled models (default assets/models)")


def add_per_class_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--per-class", type=int, help="class-conditional (c2i) samples per trained class label "
                    f"(default {COUNTS['c2i']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--images", type=int, help=f"text-to-image samples (default {COUNTS['t2i']}, tiny {TINY_COUNTS['t2i']})")
    ap.add_argument("--videos", type=int, help=f"text-to-video samples (default {COUNTS['t2v']}, tiny {TINY_COUNTS['t2v']})")
    add_per_class_arg(ap)
    ap.add_argument("--tiny", action="store_true", help="a handful of samples (smoke run on stand-in models)")
    ap.add_argument("--backend", default="xla", choices=["simulate", "xla", "pallas"])
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality, quality_tiny with --tiny)")
    args = ap.parse_args(argv)
    presets = ["fp"] + [p for p in args.presets if p != "fp"]  # FP first: the reference of every row
    from vidq_jax.bundled import ModelMissing

    t0 = time.perf_counter()
    counts = {"t2i": args.images, "t2v": args.videos, "c2i": args.per_class}
    return run_and_write(
        args, lambda spec: run_model(spec, presets=presets, counts=counts, tiny=args.tiny, backend=args.backend,
                                     models_dir=args.models_dir), "quality", to_markdown, t0)


def run_and_write(args, run_one, name: str, to_md, t0: float) -> int:
    """Run ``run_one(spec) -> (rows, models)`` for every ``args.models`` spec, then write
    ``benchmarks/results/<name>.{json,md}`` (``--out``; ``_tiny`` for toy runs) with the environment.
    Returns the exit status (2 when a bundled model is missing)."""
    rows: list[dict] = []
    models: dict = {}
    for spec in args.models:
        print(spec, flush=True)
        try:
            r, info = run_one(spec)
        except ModelMissing as e:
            print(f"{name}.py: {e}")
            return 2
        rows += r
        models.update(info)
    out, total = write_results(args, name, to_md, rows, models, t0)
    print(f"wrote {out.with_suffix('.md')} and .json ({total:.0f} s)")
    return 0


def write_results(args, name: str, to_md, rows: list[dict], models: dict, t0: float):
    """Write ``rows`` / ``models`` with the environment as ``benchmarks/results/<name>.{json,md}`` (``--out``;
    ``_tiny`` for toy runs); also what a long run writes as its rows complete. Returns ``(stem, seconds)``."""
    mark_toy(rows, args.tiny)
    total = time.perf_counter() - t0
    env = {**environment(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "backend": args.backend, "tiny": args.tiny}
    out = results_path(REPO / "benchmarks" / "results" / name, args.out, args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "models": models, "rows": rows, "total_s": total},
                                                   indent=1, default=float))
    out.with_suffix(".md").write_text(to_md(rows, models, env, total))
    return out, total


if __name__ == "__main__":
    raise SystemExit(main())

"""Online rotation vs the offline fold of the attention-output balancing (issue 12) on the bundled models.

    python -m benchmarks.fold_quality                          # t2i + c2i, CPU (~10 min)
    python -m benchmarks.fold_quality --models t2i --tiny      # smoke run

For every bundled model: samples of ``fp`` and of each preset pair ``X`` / ``X-fold`` (``viditq-w8a8``,
``viditq-w4a8``: the same recipe, with the smoothing + rotation of every attention output projection
either online — full-``K`` randomized Hadamard — or folded offline into V and ``proj`` with a per-head
rotation, :mod:`vidq_jax.quant.fold`) from the same noise (PSNR / SSIM vs FP, FD, accuracy:
:func:`benchmarks.quality.evaluate`), and the per-token incoherence (``max|x| / mean|x|``) of each ``proj``
input on the calibration batches: unbalanced, after the online transform ``(x / s) · R``, and in the folded
float model. Writes ``benchmarks/results/fold_quality.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import numpy as np

from benchmarks.common import title
from benchmarks.quality import COUNTS, TINY_COUNTS, add_model_args, add_per_class_arg, evaluate, prepare, run_and_write
from models.families import family_of
from vidq_jax.eval.fidelity import balance_transforms
from vidq_jax.quant import collect_stats, dense_paths
from vidq_jax.quant.fold import fold_params

PAIRS = ("viditq-w8a8", "viditq-w4a8")


def folded_float(dm, preset: str, stats) -> Any:
    """The float params of ``dm`` with ``preset``'s fold applied (what the folded records' inputs come from)."""
    cfg = dm.quant_config(preset)
    settings = {p: [cfg.resolve(p)] for p in dense_paths(dm.params)}
    return fold_params(dm.compute_params, settings, model=dm.model, config=cfg, stats=stats, batches=None)[0]


def proj_incoherence(dm, setup, online_q) -> dict[str, dict[str, float]]:
    """``{proj path: {"none", "online", "fold"}}``: mean per-token incoherence of each attention output
    projection's input over the calibration batches."""
    fam = family_of(dm.model)
    projs = [p for p in dense_paths(dm.params) if fam.attention_output_of(p)]
    online = {p: t for p, t in balance_transforms(online_q).items() if p in projs}
    after = collect_stats(dm.model, dm.compute_params, setup.calib, paths=projs, transforms=online)
    fold = collect_stats(dm.model, folded_float(dm, PAIRS[0] + "-fold", setup.stats), setup.calib, paths=projs)
    return {p: {"none": setup.stats[p].incoherence_mean, "online": after[p].incoherence_mean,
                "fold": fold[p].incoherence_mean, "max_none": setup.stats[p].incoherence_max,
                "max_online": after[p].incoherence_max, "max_fold": fold[p].incoherence_max} for p in projs}


def run_model(spec: str, *, counts: dict, tiny: bool, backend: str, models_dir: str | None) -> tuple[list, dict]:
    setup = prepare(spec, counts=counts, tiny=tiny, models_dir=models_dir)
    dm = setup.dm
    rows, ref, online_q = [], None, None
    for preset in ("fp",) + tuple(p + s for p in PAIRS for s in ("", "-fold")):
        t0 = time.perf_counter()
        q = jax.block_until_ready(dm.quantize(preset, setup.calib, backend=backend, stats=setup.stats))
        x, m = evaluate(setup, q, ref)
        ref = x if ref is None else ref
        online_q = q if preset == PAIRS[0] else online_q
        rows.append({"model": dm.name, "task": dm.task, "preset": preset, "psnr": m["psnr"], "ssim": m["ssim"],
                     "fd": m["fd"], "cond_acc": m["cond_acc"], "finite": m["finite"], "seconds": time.perf_counter() - t0})
        print(f"  {dm.name:22s} {preset:18s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  FD {m['fd']:8.3f}", flush=True)
    inc = proj_incoherence(dm, setup, online_q)
    return rows, {dm.name: {"task": dm.task, "samples": len(setup.prompts), "calib_batches": len(setup.calib),
                            "proj_incoherence": inc}}


def to_markdown(rows: list[dict], models: dict, env: dict, total_s: float) -> str:
    out = ["# " + title("Attention-output balancing: online rotation vs offline fold (issue 12)", bool(env.get("tiny"))),
           "", f"JAX {env['jax_version']}, {env['platform']} ({env.get('cpu', '')}), {env['date']}, backend `{env['backend']}`, {total_s:.0f} s. "
           "`X-fold` = preset `X` with the smoothing + rotation of every attention `proj` input folded into V and "
           "`proj` offline (per-head randomized Hadamard; `vidq_jax/quant/fold.py`); everything else identical. "
           "PSNR / SSIM vs the float samples (same noise).", ""]
    for name, info in models.items():
        out += [f"## {name} ({info['task']}, {info['samples']} samples, {info['calib_batches']} calibration batches)", "",
                "| preset | PSNR dB | SSIM | FD | acc. |", "|---|---|---|---|---|"]
        out += [f"| `{r['preset']}` | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fd']:.3f} | {r['cond_acc']:.3f} |"
                for r in rows if r["model"] == name]
        inc = info["proj_incoherence"]
        out += ["", "Per-token incoherence `max|x|/mean|x|` of the `proj` inputs (mean over calibration tokens; "
                "max in brackets): unbalanced, online `(x/s)·R` (viditq-w8a8), folded (viditq-w8a8-fold).", "",
                "| layer | none | online | fold |", "|---|---|---|---|"]
        out += [f"| `{p}` | {v['none']:.2f} ({v['max_none']:.1f}) | {v['online']:.2f} ({v['max_online']:.1f}) | "
                f"{v['fold']:.2f} ({v['max_fold']:.1f}) |" for p, v in inc.items()]
        mean = {k: float(np.mean([v[k] for v in inc.values()])) for k in ("none", "online", "fold")}
        out += [f"| mean | {mean['none']:.2f} | {mean['online']:.2f} | {mean['fold']:.2f} |", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.set_defaults(models=["t2i", "c2i"])
    add_per_class_arg(ap)
    ap.add_argument("--samples", type=int, help=f"samples of t2i / t2v (default {COUNTS['t2i']} / {COUNTS['t2v']}, "
                    f"tiny {TINY_COUNTS['t2i']} / {TINY_COUNTS['t2v']})")
    ap.add_argument("--tiny", action="store_true", help="a handful of samples")
    ap.add_argument("--out", help="output stem (default benchmarks/results/fold_quality)")
    args = ap.parse_args(argv)
    args.backend = "xla"  # the integer path on CPU (the kernels' numerics: benchmarks/quality_backends.py)
    counts = {"t2i": args.samples, "t2v": args.samples, "c2i": args.per_class}
    return run_and_write(args, lambda spec: run_model(spec, counts=counts, tiny=args.tiny, backend=args.backend,
                                                      models_dir=args.models_dir), "fold_quality", to_markdown,
                         time.perf_counter())


if __name__ == "__main__":
    raise SystemExit(main())

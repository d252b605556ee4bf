"""Q-VDiT vs ViDiT-Q on the bundled text-to-video model (issue 16): does distillation beat calibration?

    python -m benchmarks.quality_qvdit --tiny                      # CPU smoke run (minutes), quality_qvdit_tiny.md
    python -m benchmarks.quality_qvdit --videos 32 --steps 2000    # the table (GPU)

Rows, every one sampled from the same prompts and noise as the float model (:mod:`benchmarks.quality`:
feature-network metrics, PSNR / SSIM vs FP):

* ``fp``;
* ViDiT-Q, calibration only: ``viditq-w4a8`` (the preset), and ``viditq-w4a6-mp`` / ``viditq-w3a6-mp``
  — ViDiT-Q's balancing (smoothing α = 0.01 + rotation) with the per-layer bits that Q-VDiT's labels hide
  (attention W4/W3 with A6, MLP W8A8; :func:`vidq_jax.quant.config._qvdit`), so that the Q-VDiT rows are
  compared like with like;
* ``qvdit-w4a6`` / ``qvdit-w3a6`` calibration only (clip-searched weights, zero TQE branch) and after
  distillation (:func:`vidq_jax.quant.distill.distill` on the same calibration batches as every other
  row: a few demo prompts' float trajectories) — with its cost (steps, seconds, device, loss before →
  after).

The paper's claim (Q-VDiT > ViDiT-Q at W4A6 and W3A6) is what the table tests. Writes
``benchmarks/results/quality_qvdit.{json,md}`` (``--out`` changes the stem; ``--tiny`` appends ``_tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import jax

from benchmarks.common import REPO, environment, mark_toy, results_path, title
from benchmarks.quality import COUNTS, TINY_COUNTS, evaluate, prepare, setup_info
from benchmarks.quant_report import _bits_label, _fmt
from vidq_jax.bundled import ModelMissing, weight_bytes
from vidq_jax.quant import LayerRule, QuantConfig, dense_paths, quantize_params
from vidq_jax.quant.distill import distill
from vidq_jax.quant.distill.loop import LR

DISTILL_STEPS = 1000
TINY_STEPS, TINY_LR = 20, 1e-4


def viditq_mp(w_bits: int) -> QuantConfig:
    """ViDiT-Q (balancing of ``viditq-w4a8``) with Q-VDiT's hidden per-layer bits: attention W{w_bits}A6,
    MLP W8A8."""
    base = QuantConfig.preset("viditq-w4a8")
    return base.replace(name=f"viditq-w{w_bits}a6-mp", default=base.default.replace(w_bits=w_bits, a_bits=6),
                        rules=base.rules + (LayerRule("group:ffn", w_bits=8, a_bits=8),))


def variants(steps: int) -> list[tuple[str, str, QuantConfig | None, bool]]:
    """``(row name, method, config, distilled)`` of every row after FP."""
    rows = [("viditq-w4a8", "ViDiT-Q", QuantConfig.preset("viditq-w4a8"), False)]
    for w in (4, 3):
        rows += [(f"viditq-w{w}a6-mp", "ViDiT-Q", viditq_mp(w), False),
                 (f"qvdit-w{w}a6 (calibration)", "Q-VDiT, no distillation", QuantConfig.preset(f"qvdit-w{w}a6"), False),
                 (f"qvdit-w{w}a6", f"Q-VDiT, {steps} distillation steps", QuantConfig.preset(f"qvdit-w{w}a6"), True)]
    return rows


def run(spec: str, *, videos: int | None, tiny: bool, steps: int, lr: float, scale_lr: float | None, backend: str,
        models_dir: str | None, ckpt_dir: str | None, progress: bool) -> tuple[list[dict], dict]:
    setup = prepare(spec, counts={"t2v": videos}, tiny=tiny, models_dir=models_dir)
    dm, calib = setup.dm, setup.calib
    if dm.task != "t2v":
        raise SystemExit(f"quality_qvdit.py: {dm.folder} is a {dm.task} model; Q-VDiT is for text-to-video")
    paths = dense_paths(dm.params)
    fp_samples, rows = None, []
    for name, method, cfg, distilled in [("fp", "float", None, False)] + variants(steps):
        t0 = time.perf_counter()
        cost: dict[str, Any] = {}
        if cfg is None:
            q = dm.params
        elif distilled:
            ck = None if ckpt_dir is None else os.path.join(ckpt_dir, cfg.name)
            res = distill(dm.model, dm.params, calib, config=cfg.name, steps=steps, lr=lr, scale_lr=scale_lr,
                          checkpoint_dir=ck, backend=backend, progress=progress)
            q = res.params
            cost = {"distill_steps": res.steps, "distill_s": res.seconds_all, "distill_lr": lr,
                    "loss_before": res.before["loss"], "loss_after": res.after["loss"],
                    "trainable_params": res.settings["trainable_params"]}
        else:
            q = quantize_params(dm.params, calib, model=dm.model, config=cfg.replace(
                default=cfg.default.replace(backend=backend)), stats=setup.stats)
        quantize_s = time.perf_counter() - t0
        x, metrics = evaluate(setup, jax.block_until_ready(q), fp_samples)
        fp_samples = x if fp_samples is None else fp_samples
        bound = None if cfg is None else cfg.for_model(dm.model, paths)
        row = {"row": name, "method": method, "bits": "FP" if bound is None else _bits_label(bound, dm.params),
               "bytes": weight_bytes(q), **{k: v for k, v in metrics.items() if k not in ("feature_dim",)},
               "quantize_s": quantize_s, **cost}
        rows.append(row)
        print(f"  {name:28s} PSNR {row['psnr']:6.2f} dB  FD {row['fd']:8.3f}  acc {row['cond_acc']:.3f}  motion "
              f"{_fmt(row.get('motion_acc'), 3)}  temporal {_fmt(row.get('temporal_consistency'), 4)}  "
              f"[{quantize_s + row['sample_s']:.0f} s]", flush=True)
    return rows, {**setup_info(setup), "arch": dm.name}


def to_markdown(rows: list[dict], info: dict, env: dict, args: argparse.Namespace, total_s: float) -> str:
    s = info["sampler"]
    lines = [
        "# " + title("Q-VDiT vs ViDiT-Q on the bundled text-to-video model", bool(env.get("tiny")),
                     f"--tiny: {info['samples']} videos, {args.steps} distillation steps"),
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}, {env['cpu_count']} CPU cores), "
        f"`{env['backend']}` backend; `benchmarks/quality_qvdit.py` in {total_s / 60:.1f} min.",
        "",
        f"- model {info['arch']} ({info['model']}, hidden {info['config']['hidden_size']}, depth "
        f"{info['config']['depth']}); sampler {s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}; "
        f"{info['samples']} videos (captions of `assets/{info['eval_bank']}.npz`), noise seed {info['eval_noise_seed']}",
        f"- calibration (every row, distillation included): {len(info['calibration']['prompts'])} demo prompts, "
        f"every {info['calibration']['every_k_steps']}-th step, {info['calibration']['batches']} batches",
        f"- distillation: AdamW + cosine, peak LR {args.lr:g} (LoRA rank 32 / TQE / per-frame scales) and "
        f"{args.scale_lr if args.scale_lr is not None else args.lr / 10:g} (step sizes), γ = 100, one calibration "
        f"batch per step (the released code: 10k / 15k steps at 1e-5 / 1e-6 on OpenSora)",
        "- bits: element-weighted mean weight bits over the quantized layers, activation bits of the attention "
        "layers (the MLPs of the `-mp` and `qvdit` rows are W8A8: Q-VDiT's labels hide it)",
        "- PSNR / SSIM vs the FP samples; FD to the real clips' features (lower is better, biased upward with few "
        "samples: compare rows); acc. = subject (animal) accuracy, motion = direction accuracy, temporal = "
        "consistency of consecutive frames' features (`vidq_jax.eval.quality`)",
        "",
        "| row | method | bits | PSNR dB | SSIM | FD | subject acc. | motion acc. | temporal | distill steps | "
        "distill s | calib. loss before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loss = (f"{r['loss_before']:.4g} → {r['loss_after']:.4g}" if "loss_before" in r else "–")
        lines.append(f"| `{r['row']}` | {r['method']} | {r['bits']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['fd']:.3f} | {r['cond_acc']:.3f} | {_fmt(r.get('motion_acc'), 3)} | "
                     f"{_fmt(r.get('temporal_consistency'), 4)} | {_fmt(r.get('distill_steps'))} | "
                     f"{_fmt(r.get('distill_s'), 4)} | {loss} |")
    by = {r["row"]: r for r in rows}
    lines += ["", "Paper's ordering, tested (PSNR vs FP / FD):"]
    for w in (4, 3):
        v, q = by.get(f"viditq-w{w}a6-mp"), by.get(f"qvdit-w{w}a6")
        if v and q:
            lines.append(f"- W{w}A6: Q-VDiT {q['psnr']:.2f} dB / FD {q['fd']:.3f} vs ViDiT-Q {v['psnr']:.2f} dB / FD "
                         f"{v['fd']:.3f}: {'Q-VDiT ahead' if q['psnr'] > v['psnr'] else 'ViDiT-Q ahead'} by PSNR, "
                         f"{'Q-VDiT ahead' if q['fd'] < v['fd'] else 'ViDiT-Q ahead'} by FD")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="t2v", help="t2v (bundled) or a text-to-video model folder of vidq_jax.train")
    ap.add_argument("--models-dir", help="folder holding the bundled models (default assets/models)")
    ap.add_argument("--videos", type=int, help=f"evaluation videos (default {COUNTS['t2v']}, tiny {TINY_COUNTS['t2v']})")
    ap.add_argument("--steps", type=int, help=f"distillation steps (default {DISTILL_STEPS}, tiny {TINY_STEPS})")
    ap.add_argument("--lr", type=float, help=f"peak LR of LoRA / TQE (default {LR:g}, tiny {TINY_LR:g})")
    ap.add_argument("--scale-lr", type=float, help="peak LR of the step sizes (default lr / 10)")
    ap.add_argument("--tiny", action="store_true", help="2 videos, 20 distillation steps (CPU smoke run)")
    ap.add_argument("--backend", default="xla", choices=["simulate", "xla", "pallas", "auto"])
    ap.add_argument("--ckpt-dir", help="distillation checkpoints (resumable) under this folder")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality_qvdit)")
    args = ap.parse_args(argv)
    args.steps = args.steps or (TINY_STEPS if args.tiny else DISTILL_STEPS)
    args.lr = args.lr if args.lr is not None else (TINY_LR if args.tiny else LR)
    t0 = time.perf_counter()
    try:
        rows, info = run(args.model, videos=args.videos, tiny=args.tiny, steps=args.steps, lr=args.lr,
                         scale_lr=args.scale_lr, backend=args.backend, models_dir=args.models_dir,
                         ckpt_dir=args.ckpt_dir, progress=not args.no_progress)
    except ModelMissing as e:
        print(f"quality_qvdit.py: {e}")
        return 2
    mark_toy(rows, args.tiny)
    total = time.perf_counter() - t0
    env = {**environment(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "backend": args.backend, "tiny": args.tiny}
    out = results_path(REPO / "benchmarks" / "results" / "quality_qvdit", args.out, args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "model": info, "rows": rows, "total_s": total,
                                                    "settings": {k: v for k, v in vars(args).items()}},
                                                   indent=1, default=float))
    out.with_suffix(".md").write_text(to_markdown(rows, info, env, args, total))
    print(f"wrote {out.with_suffix('.md')} and .json ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

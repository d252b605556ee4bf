"""Q-VDiT vs ViDiT-Q on the bundled text-to-video model (issue 16): does distillation beat calibration?

    python -m benchmarks.quality_qvdit --tiny                      # CPU smoke run (minutes), quality_qvdit_tiny.md
    python -m benchmarks.quality_qvdit --videos 32 --steps 2000    # the table (GPU)
    python -m benchmarks.quality_qvdit --videos 32 --time-limit 530 --model MODEL_DIR --out $OUT/quality_qvdit

Rows, every one sampled from the same prompts and noise as the float model (:mod:`benchmarks.quality`:
feature-network metrics, PSNR / SSIM vs FP):

* ``fp``;
* ViDiT-Q, calibration only: ``viditq-w4a8`` (the preset), and ``viditq-w4a6-mp`` / ``viditq-w3a6-mp``
  — ViDiT-Q's balancing (smoothing α = 0.01 + rotation) with the per-layer bits that Q-VDiT's labels hide
  (attention W4/W3 with A6, MLP W8A8; :func:`vidq_jax.quant.config._qvdit`), so that the Q-VDiT rows are
  compared like with like;
* ``qvdit-w4a6`` / ``qvdit-w3a6`` calibration only (clip-searched weights, zero TQE branch, per-frame
  scales 1 on the temporal layers as distillation starts them) and after distillation
  (:func:`vidq_jax.quant.distill.distill` on the same calibration batches as every other row: a few demo
  prompts' float trajectories) — with its cost (steps, seconds, device, loss before → after).

The calibration-only rows run first and the two distillations last; the JSON / markdown are rewritten
after every row (a cut run keeps the rows it finished; the markdown says it is partial). With
``--time-limit`` the whole script plans to finish within that many seconds (:func:`plan_steps`): the
first distillation compiles and times its step on a few throw-away steps, the steps that fit (both
presets the same number, at most ``--steps``) are planned from that and from the measured rows, and the
second distillation stops early if it runs out of time anyway (its row says so).

The paper's claim (Q-VDiT > ViDiT-Q at W4A6 and W3A6) is what the table tests. Writes
``benchmarks/results/quality_qvdit.{json,md}`` (``--out`` changes the stem; ``--tiny`` appends ``_tiny``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from benchmarks.common import REPO, environment, mark_toy, results_path, title
from benchmarks.quality import COUNTS, TINY_COUNTS, evaluate, prepare, setup_info
from benchmarks.quant_report import _bits_label, _fmt
from vidq_jax.bundled import ModelMissing, weight_bytes
from vidq_jax.quant import LayerRule, QuantConfig, dense_paths, quantize_params
from vidq_jax.quant.distill import distill, distill_config, latent_frames
from vidq_jax.quant.distill.loop import LR

DISTILL_STEPS = 1000
BUDGET_MAX_STEPS = 10_000  # the step cap with --time-limit and no --steps (the released code's W4A6 count)
TINY_STEPS, TINY_LR = 20, 1e-4
MARGIN = (10.0, 0.03)  # seconds kept free of a --time-limit: max(10 s, 3 %)


def viditq_mp(w_bits: int) -> QuantConfig:
    """ViDiT-Q (balancing of ``viditq-w4a8``) with Q-VDiT's hidden per-layer bits: attention W{w_bits}A6,
    MLP W8A8."""
    base = QuantConfig.preset("viditq-w4a8")
    return base.replace(name=f"viditq-w{w_bits}a6-mp", default=base.default.replace(w_bits=w_bits, a_bits=6),
                        rules=base.rules + (LayerRule("group:ffn", w_bits=8, a_bits=8),))


def variants(steps: int) -> list[tuple[str, str, QuantConfig | None, bool]]:
    """``(row name, method, config, distilled)`` of every row after FP, in table order."""
    rows = [("viditq-w4a8", "ViDiT-Q", QuantConfig.preset("viditq-w4a8"), False)]
    for w in (4, 3):
        rows += [(f"viditq-w{w}a6-mp", "ViDiT-Q", viditq_mp(w), False),
                 (f"qvdit-w{w}a6 (calibration)", "Q-VDiT, no distillation", QuantConfig.preset(f"qvdit-w{w}a6"), False),
                 (f"qvdit-w{w}a6", f"Q-VDiT, {steps} distillation steps", QuantConfig.preset(f"qvdit-w{w}a6"), True)]
    return rows


def run_order(rows: list[tuple[str, str, QuantConfig | None, bool]]) -> list[tuple[str, str, QuantConfig | None, bool]]:
    """The rows as they are computed: ``fp`` and every calibration-only row first, the distillations last
    (what a time budget plans around, and what a cut run loses first)."""
    return [("fp", "float", None, False)] + [r for r in rows if not r[3]] + [r for r in rows if r[3]]


# ------------------------------------------------------------------------------------------------
# time budget
# ------------------------------------------------------------------------------------------------


def plan_steps(left_s: float, reserve_s: float, step_s: float, presets: int, cap: int) -> int:
    """Distillation steps per preset that fit: ``⌊(left − reserve) / (presets · step)⌋`` within ``0..cap``
    (``left``: seconds of the budget left; ``reserve``: what the rest of the run needs besides the steps)."""
    if step_s <= 0:
        return cap
    return int(np.clip(np.floor((left_s - reserve_s) / (presets * step_s)), 0, cap))


def reserve_s(timings: Mapping[str, float], row_s: float, presets_after: int, margin_s: float) -> float:
    """What the run needs besides training steps once the first distillation has compiled and timed its
    step (its ``timings``): its finish (loss after + fold; bounded by its setup, which holds the same loss
    pass with its compilation) and its row (``row_s``: sampling + metrics of a calibration-only row of the
    preset, compilation included), then per later preset its setup, compile, finish and row, and the margin."""
    return timings["setup"] + row_s + presets_after * (2 * timings["setup"] + timings["compile"] + row_s) + margin_s


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere): the imports before ``main``
    count against a time limit too."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclasses.dataclass
class Budget:
    """``--time-limit`` bookkeeping: seconds of ``clock`` since ``t0`` (default: the process start)
    against ``limit`` (``None``: no limit)."""

    limit: float | None
    clock: Callable[[], float] = time.perf_counter
    t0: float | None = None

    def __post_init__(self):
        if self.t0 is None:
            self.t0 = self.clock() - process_age()

    @property
    def margin(self) -> float:
        return 0.0 if self.limit is None else max(MARGIN[0], MARGIN[1] * self.limit)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return float("inf") if self.limit is None else self.limit - self.elapsed()


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Settings of one table run (parsed arguments)."""

    spec: str
    videos: int | None
    tiny: bool
    steps: int
    lr: float
    scale_lr: float | None
    backend: str
    models_dir: str | None = None
    ckpt_dir: str | None = None
    progress: bool = True


def run(cfg: Run, budget: Budget, on_row: Callable[[list[dict], dict], None]) -> tuple[list[dict], dict]:
    """Every row (:func:`run_order`), ``on_row(rows, info)`` after each; returns ``(rows, info)`` with the
    rows in table order and ``info["budget"]`` (limit, planned steps, measured step time)."""
    from tqdm.auto import tqdm

    setup = prepare(cfg.spec, counts={"t2v": cfg.videos}, tiny=cfg.tiny, models_dir=cfg.models_dir)
    dm, calib = setup.dm, setup.calib
    if dm.task != "t2v":
        raise SystemExit(f"quality_qvdit.py: {dm.folder} is a {dm.task} model; Q-VDiT is for text-to-video")
    paths = dense_paths(dm.params)
    frames = latent_frames(dm.model, tuple(np.shape(calib[0].batch["x"])))
    table = [("fp", "float", None, False)] + variants(cfg.steps)
    order = run_order(table[1:])
    presets = sum(d for *_, d in order)
    plan: dict[str, Any] = {"limit_s": budget.limit, "cap": cfg.steps, "margin_s": budget.margin,
                            "setup_s": budget.elapsed()}
    info = {**setup_info(setup), "arch": dm.name, "budget": plan, "rows_total": len(order)}
    steps = None if budget.limit is not None else cfg.steps  # with a limit: planned by the first distillation
    fp_samples, done = None, {}
    row_s: dict[str, float] = {}  # sampling + metrics of the calibration-only Q-VDiT rows, by preset

    def planner(timings: Mapping[str, float]) -> int:
        row = max(row_s.values(), default=0.0)
        plan["reserve_s"] = reserve_s(timings, row, presets - 1, budget.margin)
        n = plan_steps(budget.left(), plan["reserve_s"], timings["step"], presets, cfg.steps)
        plan.update(step_s=timings["step"], compile_s=timings["compile"], distill_setup_s=timings["setup"],
                    planned_at_s=budget.elapsed(), planned_steps=n)
        tqdm.write(f"  plan: {budget.left():.0f} s left, step {1e3 * timings['step']:.1f} ms, compile "
                   f"{timings['compile']:.1f} s, reserve {plan['reserve_s']:.0f} s -> {max(n, 1)} steps per preset")
        return max(n, 1)

    bar = tqdm(total=len(order), unit="row", disable=not cfg.progress, dynamic_ncols=True, desc="quality_qvdit")
    for name, method, qcfg, distilled in order:
        bar.set_postfix_str(f"{name} · {budget.elapsed():.0f} s" + ("" if budget.limit is None else
                                                                    f" of {budget.limit:.0f} s"))
        t0 = budget.clock()
        cost: dict[str, Any] = {}
        if qcfg is None:
            q = dm.params
        elif distilled:
            ck = None if cfg.ckpt_dir is None else os.path.join(cfg.ckpt_dir, qcfg.name)
            kw: dict[str, Any] = {"steps": cfg.steps}
            if budget.limit is not None:
                if steps is None:  # the first distillation plans the steps of every preset (time limit: a guard)
                    kw.update(plan=planner, time_limit=max(budget.left() - budget.margin, 0.0))
                else:  # the later ones train as many, and stop early rather than overrun: the loop gets what
                    # the budget leaves after its setup, finish (~ setup), row and the margin
                    loop_s = budget.left() - 2 * plan["distill_setup_s"] - row_s.get(qcfg.name, 0.0) - budget.margin
                    if loop_s < plan["compile_s"]:
                        plan.setdefault("skipped", []).append(qcfg.name)
                        tqdm.write(f"  {name:28s} skipped: {budget.left():.0f} s left, not enough for its "
                                   f"distillation's setup, compilation and row")
                        bar.update(1)
                        on_row([done[n] for n, *_ in table if n in done], info)
                        continue
                    kw.update(steps=steps, time_limit=loop_s)
            res = distill(dm.model, dm.params, calib, config=qcfg.name, lr=cfg.lr, scale_lr=cfg.scale_lr,
                          checkpoint_dir=ck, backend=cfg.backend, progress=cfg.progress, stats=setup.stats, **kw)
            steps = res.settings["steps"] if steps is None else steps
            plan.setdefault("distill_setup_s", res.timings["setup"])  # a resumed first run did not plan
            plan.setdefault("compile_s", res.timings.get("compile", 0.0))
            q = res.params
            method = f"Q-VDiT, {res.steps} distillation steps" + ("" if res.complete else
                                                                   f" (cut: {res.settings['steps']} planned)")
            cost = {"distill_steps": res.steps, "distill_planned_steps": res.settings["steps"],
                    "distill_complete": res.complete, "distill_s": res.seconds_all, "distill_lr": cfg.lr,
                    "distill_timings": res.timings, "loss_before": res.before["loss"],
                    "loss_after": res.after["loss"], "trainable_params": res.settings["trainable_params"]}
        else:
            if qcfg.name.startswith("qvdit-"):  # per-frame scales (ones) as distillation starts them: the
                qcfg = distill_config(dm.model, dm.params, qcfg, frames)  # same samples, one sampler compile
            q = quantize_params(dm.params, calib, model=dm.model, config=qcfg.replace(
                default=qcfg.default.replace(backend=cfg.backend)), stats=setup.stats)
        quantize_s = budget.clock() - t0
        t1 = budget.clock()
        x, metrics = evaluate(setup, jax.block_until_ready(q), fp_samples)
        eval_s = budget.clock() - t1
        if qcfg is not None and not distilled and qcfg.name.startswith("qvdit-"):
            row_s[qcfg.name] = eval_s
        fp_samples = x if fp_samples is None else fp_samples
        bound = None if qcfg is None else qcfg.for_model(dm.model, paths)
        row = {"row": name, "method": method, "bits": "FP" if bound is None else _bits_label(bound, dm.params),
               "bytes": weight_bytes(q), **{k: v for k, v in metrics.items() if k not in ("feature_dim",)},
               "quantize_s": quantize_s, "eval_s": eval_s, "at_s": budget.elapsed(), **cost}
        done[name] = row
        bar.update(1)
        tqdm.write(f"  {name:28s} PSNR {row['psnr']:6.2f} dB  FD {row['fd']:8.3f}  acc {row['cond_acc']:.3f}  motion "
                   f"{_fmt(row.get('motion_acc'), 3)}  temporal {_fmt(row.get('temporal_consistency'), 4)}  "
                   f"[quantize {quantize_s:.0f} s + sample {row['eval_s']:.0f} s; {budget.elapsed():.0f} s in]")
        info["rows_done"] = len(done)
        on_row([done[n] for n, *_ in table if n in done], info)
    bar.close()
    return [done[n] for n, *_ in table if n in done], info


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def steps_used(rows: list[dict]) -> str:
    """``"2000"`` (every distilled row) or ``"2000 / 1234"`` (one per row)."""
    used = list(dict.fromkeys(str(r["distill_steps"]) for r in rows if "distill_steps" in r))
    return " / ".join(used) if used else "no"


def to_markdown(rows: list[dict], info: dict, env: dict, args: argparse.Namespace, total_s: float) -> str:
    s = info["sampler"]
    b = info.get("budget", {})
    lines = [
        "# " + title("Q-VDiT vs ViDiT-Q on the bundled text-to-video model", bool(env.get("tiny")),
                     f"--tiny: {info['samples']} videos, {steps_used(rows)} distillation steps"),
        "",
    ]
    if info.get("rows_done", len(rows)) < info.get("rows_total", len(rows)) or info.get("partial"):
        lines += [f"**PARTIAL: {len(rows)} of {info['rows_total']} rows, written {total_s:.0f} s into the run "
                  "(the run was cut or is still going; rows are written as they finish).**", ""]
    lines += [
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}, {env['cpu_count']} CPU cores), "
        f"`{env['backend']}` backend; `benchmarks/quality_qvdit.py` in {total_s / 60:.1f} min.",
        "",
        f"- model {info['arch']} ({info['model']}, hidden {info['config']['hidden_size']}, depth "
        f"{info['config']['depth']}); sampler {s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}; "
        f"{info['samples']} videos (captions of `assets/{info['eval_bank']}.npz`), noise seed {info['eval_noise_seed']}",
        f"- calibration (every row, distillation included): {len(info['calibration']['prompts'])} demo prompts, "
        f"every {info['calibration']['every_k_steps']}-th step, {info['calibration']['batches']} batches",
        f"- distillation: {steps_used(rows)} steps, AdamW + cosine, peak LR {args.lr:g} (LoRA rank 32 / TQE / "
        f"per-frame scales) and {args.scale_lr if args.scale_lr is not None else args.lr / 10:g} (step sizes), "
        f"γ = 100, one calibration batch per step (the released code: 10k / 15k steps at 1e-5 / 1e-6 on OpenSora)",
    ]
    if b.get("limit_s") is not None:
        planned = (f"{b['planned_steps']} steps per preset planned {b['planned_at_s']:.0f} s in from a measured step "
                   f"of {1e3 * b['step_s']:.1f} ms (compile {b['compile_s']:.1f} s), at most {b['cap']}"
                   if "planned_steps" in b else "no distillation started")
        skipped = f"; skipped for lack of time: {', '.join(b['skipped'])}" if b.get("skipped") else ""
        lines.append(f"- time budget `--time-limit {b['limit_s']:g}`: {planned}{skipped}")
    lines += [
        "- bits: element-weighted mean weight bits over the quantized layers, activation bits of the attention "
        "layers (the MLPs of the `-mp` and `qvdit` rows are W8A8: Q-VDiT's labels hide it)",
        "- PSNR / SSIM vs the FP samples; FD to the real clips' features (lower is better, biased upward with few "
        "samples: compare rows); acc. = subject (animal) accuracy, motion = direction accuracy, temporal = "
        "consistency of consecutive frames' features (`vidq_jax.eval.quality`); distill s: the training steps "
        "(the compilation and the loss passes before / after are in the JSON's `distill_timings`)",
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
    budget = Budget(None)  # the clock starts with the process
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="t2v", help="t2v (bundled) or a text-to-video model folder of vidq_jax.train")
    ap.add_argument("--models-dir", help="folder holding the bundled models (default assets/models)")
    ap.add_argument("--videos", type=int, help=f"evaluation videos (default {COUNTS['t2v']}, tiny {TINY_COUNTS['t2v']})")
    ap.add_argument("--steps", type=int, help=f"distillation steps (default {DISTILL_STEPS}, tiny {TINY_STEPS}); with "
                    f"--time-limit the most steps (default {BUDGET_MAX_STEPS})")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="finish the whole run within this many seconds (from the start of the process): the "
                         "distillation steps are planned from the measured step time, the same for both presets")
    ap.add_argument("--lr", type=float, help=f"peak LR of LoRA / TQE (default {LR:g}, tiny {TINY_LR:g})")
    ap.add_argument("--scale-lr", type=float, help="peak LR of the step sizes (default lr / 10)")
    ap.add_argument("--tiny", action="store_true", help="2 videos, 20 distillation steps (CPU smoke run)")
    ap.add_argument("--backend", default="xla", choices=["simulate", "xla", "pallas", "auto"])
    ap.add_argument("--ckpt-dir", help="distillation checkpoints (resumable) under this folder")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality_qvdit)")
    args = ap.parse_args(argv)
    if args.time_limit is not None and not (np.isfinite(args.time_limit) and args.time_limit > 0):
        ap.error(f"--time-limit {args.time_limit:g}: must be a positive number of seconds")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps {args.steps}: must be >= 1")
    args.steps = args.steps or (TINY_STEPS if args.tiny else BUDGET_MAX_STEPS if args.time_limit else DISTILL_STEPS)
    args.lr = args.lr if args.lr is not None else (TINY_LR if args.tiny else LR)
    budget.limit = args.time_limit
    env = {**environment(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "backend": args.backend, "tiny": args.tiny}
    out = results_path(REPO / "benchmarks" / "results" / "quality_qvdit", args.out, args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict], info: dict) -> None:
        total = budget.elapsed()
        mark_toy(rows, args.tiny)
        out.with_suffix(".json").write_text(json.dumps(
            {"environment": env, "model": info, "rows": rows, "total_s": total,
             "complete": info.get("rows_done") == info.get("rows_total") and not info.get("partial"),
             "settings": dict(vars(args))}, indent=1, default=float))
        out.with_suffix(".md").write_text(to_markdown(rows, info, env, args, total))

    try:
        rows, info = run(Run(args.model, args.videos, args.tiny, args.steps, args.lr, args.scale_lr, args.backend,
                             args.models_dir, args.ckpt_dir, not args.no_progress), budget, write)
    except ModelMissing as e:
        print(f"quality_qvdit.py: {e}")
        return 2
    info["partial"] = bool(info.get("budget", {}).get("skipped"))
    write(rows, info)
    print(f"wrote {out.with_suffix('.md')} and .json ({budget.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

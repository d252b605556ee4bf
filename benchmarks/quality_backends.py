"""Do the fused kernels cost accuracy? One quantization, every backend, against the float model (issue 12).

    python -m benchmarks.quality_backends --out benchmarks/results/quality_backends_cpu        # CPU half
    python -m benchmarks.quality_backends --models t2i t2v --presets viditq-w8a8 --backends simulate pallas \\
        --images 16 --videos 4 --sqnr-samples 4 --out $OUT/quality_backends_gpu                  # GPU half
    python -m benchmarks.quality_backends --merge benchmarks/results/quality_backends_cpu.json \\
        quality_backends_gpu.json --out benchmarks/results/quality_backends                     # one table
    python -m benchmarks.quality_backends --tiny --models /tmp/t2i/model                          # smoke run

Per bundled model (:func:`benchmarks.quality.prepare`: the same evaluation prompts, noise and calibration as
``benchmarks/quality.py``) and preset (``--presets``, default ``viditq-w8a8``) the params are quantized ONCE
(same integers for every backend: :func:`vidq_jax.quant.set_backend`); then for each backend of
``--backends`` (``simulate`` = float32 fake quantization, the numerics reference; ``xla`` = integer
``dot_general``; ``pallas`` = the fused kernels, only where a GPU is present, else skipped with a note; the
reference backend runs first):

* samples from the same noise as the float model: PSNR / SSIM vs the float samples (and FD / accuracy from
  the shipped feature network, :func:`benchmarks.quality.evaluate`);
* per-step denoiser SQNR: at every step of the float sampler's trajectory (the first ``--sqnr-samples``
  evaluation rows, both CFG halves), the SQNR in dB of the quantized denoiser's prediction vs the float one
  (:func:`vidq_jax.eval.fidelity.denoiser_sqnr_by_step`) — mean, min and the worst step;
* against the reference backend of the run (``simulate`` when it runs, else the first backend): max / mean
  abs difference of the samples and the mean per-step SQNR of the denoiser outputs;
* the rounding floor: the reference backend against itself on inputs scaled by ``1 + 1e-6`` (per-step
  SQNR): what float rounding alone does to a quantized model, the level at which backends agree;
* the reasons a backend fell back to ``xla`` for some layers (logged by :mod:`vidq_jax.quant.backends`).

Float matmuls run at ``--matmul-precision`` (default ``highest``: true float32 on a GPU too, so the float
reference and ``simulate`` mean the same on both machines). Every row carries the device, JAX version and
date; ``--merge`` joins the JSON of runs on different machines (the CPU half here, the GPU half there)
into one table. Writes ``benchmarks/results/quality_backends.{json,md}`` (``--out`` changes the stem) after
every (model, backend) row, so a run cut short keeps what it measured.

Cost (a GPU call is short and its time goes to compiling): on a GPU every model call runs batches of the
calibration's prompt batch, so one float sampler program serves the calibration, the evaluation samples and the
SQNR trajectory (taken from the evaluation run, not sampled again) and every quantized program has the same
kernel shapes; each backend compiles one sampler and one denoiser, whatever the sample and step counts; the
float and reference denoiser outputs along the trajectory are computed once for every backend. Each phase logs
a line when it starts and one when it ends: its wall seconds, the part spent compiling (JAX's compile events),
the number of compiles and the slowest compiled functions (also in the JSON, ``models.<name>.phases``); killed
by ``timeout`` (SIGTERM), the script prints its Python stack first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import faulthandler
import json
import logging
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np

from benchmarks.common import REPO, environment, mark_toy, results_path, title
from benchmarks.quality import (COUNTS, TINY_COUNTS, EvalSetup, add_model_args, add_per_class_arg, describe_eval_set,
                                evaluate, prepare, sample_set, score, setup_info)
from vidq_jax.bundled import TASK_TITLE, upcast_bf16
from vidq_jax.eval.fidelity import denoiser_sqnr_by_step, step_summary
from vidq_jax.eval.quality import psnr
from vidq_jax.quant import PRESETS, set_backend
from vidq_jax.quant import backends as quant_backends

DEFAULT_PRESETS = ["viditq-w8a8"]
DEFAULT_BACKENDS = ["simulate", "xla", "pallas"]
SQNR_SAMPLES = {"t2i": 4, "t2v": 1, "c2i": 3}  # evaluation rows whose float trajectory the SQNR runs on (CPU sizes)
TINY_SQNR_SAMPLES = {"t2i": 1, "t2v": 1, "c2i": 1}
JITTER = 1e-6  # relative input change of the rounding floor (denoiser_sqnr_by_step(jitter=))
_STARTED = time.perf_counter()


def pallas_unavailable() -> str | None:
    """Why the ``pallas`` backend cannot run its kernels here (``None``: it can)."""
    if jax.default_backend() != "gpu":
        return f"no GPU here ({jax.default_backend()}): the fused kernels run on a GPU only"
    if quant_backends.kernels is None:
        return f"pallas_kernels cannot be imported ({quant_backends._KERNEL_IMPORT_ERROR})"
    return None


@contextlib.contextmanager
def fallbacks() -> Iterator[list[str]]:
    """Collect the backend fall-back reasons logged inside the block (each reason once per block)."""
    msgs: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage().split("falls back to xla: ", 1)[-1]
            if msg not in msgs:
                msgs.append(msg)

    log = logging.getLogger(quant_backends.logger.name)
    handler = _Catch(level=logging.WARNING)
    seen = set(quant_backends._LOGGED)
    quant_backends._LOGGED.clear()  # log every reason again inside this block
    log.addHandler(handler)
    try:
        yield msgs
    finally:
        log.removeHandler(handler)
        quant_backends._LOGGED.update(seen)


class Phases:
    """Wall seconds of each phase of a run and the part of them spent compiling: the union of the spans of
    JAX's compile events (tracing, lowering to MLIR, the backend compile; :mod:`jax.monitoring`) inside the
    phase, the number of backend compiles and the functions whose compiles took longest. ``with
    phases("fp sample"): ...`` prints a line when the phase starts (seconds since the script started) and one
    when it ends (a run cut short still shows where its time went); :attr:`rows` is the JSON."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.rows: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        spans: list[tuple[float, float]] = []
        compiled: list[tuple[str, float]] = []  # (function, backend compile seconds)

        def listen(event: str, start: float, end: float, **kw: Any) -> None:
            if event in self.EVENTS:
                spans.append((start, end))
            if event == self.EVENTS[-1]:
                compiled.append((str(kw.get("fun_name", "?")), end - start))

        jax.monitoring.register_event_time_span_listener(listen)
        t0 = time.perf_counter()
        print(f"  {self.label:22s} [{name}] starts at {t0 - _STARTED:.0f} s", flush=True)
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            jax.monitoring.unregister_event_time_span_listener(listen)
            busy, last = 0.0, float("-inf")  # length of the union of the (possibly nested) spans
            for a, b in sorted(spans):
                busy += max(0.0, b - max(a, last))
                last = max(last, b)
            by_fun: dict[str, float] = {}
            for fun, sec in compiled:
                by_fun[fun] = by_fun.get(fun, 0.0) + sec
            slowest = dict(sorted(by_fun.items(), key=lambda kv: -kv[1])[:3])
            row = {"phase": name, "wall_s": wall, "compile_s": min(busy, wall), "compiles": len(compiled),
                   "slowest_compiles_s": slowest}
            self.rows.append(row)
            print(f"  {self.label:22s} [{name}] {wall:.1f} s: compile {row['compile_s']:.1f} s ({len(compiled)} "
                  f"compiles; " + ", ".join(f"{k} {v:.1f} s" for k, v in slowest.items()) + f"), run "
                  f"{wall - row['compile_s']:.1f} s", flush=True)


def trajectory_inputs(setup: EvalSetup, trajectory: jax.Array, n: int) -> list:
    """The model inputs (both CFG halves) of every step of the float trajectory of the first ``n`` evaluation
    rows, in batches of ``setup.chunk`` rows: the shapes every other model call of the run has. All on the
    default device, committed: a jitted function compiles once per placement of its arguments, and step 0's
    noise (uncommitted) would otherwise compile every denoiser twice."""
    dm, out, device = setup.dm, [], jax.devices()[0]
    for start in range(0, n, setup.chunk):
        rows = slice(start, min(start + setup.chunk, n))
        out += [dataclasses.replace(b, batch=jax.device_put(b.batch, device)) for b in dm.trajectory_calibration(
            setup.noise[rows], trajectory[:, rows], {k: v[rows] for k, v in setup.cond.items()}, every_k_steps=1)]
    return out


def run_model(spec: str, *, presets: list[str], backends: list[str], counts: dict[str, int | None],
              sqnr_samples: int | None, tiny: bool, models_dir: str | None = None, env_row: dict | None = None,
              save: Callable[[list[dict], dict], None] | None = None) -> tuple[list[dict], dict]:
    """Rows of every (preset, backend) on one model (see the module docstring); ``save(rows, models)`` after
    every row (a run cut short keeps what it measured).

    Compiles stay few and independent of the sample and step counts: every model call runs batches of the
    calibration's prompt batch (``setup.chunk``; fewer rows on a CPU where quality.py samples fewer), so the
    float sampler compiled for the calibration also samples the evaluation set, with its trajectory (no second
    float run for the SQNR inputs); each backend compiles its sampler and its denoiser once; the float and
    reference denoiser outputs along the trajectory are computed once for every backend
    (``denoiser_sqnr_by_step(outputs=)``)."""
    t_model = time.perf_counter()
    phases = Phases(str(spec))
    with phases("prepare (calibration, statistics)"):
        setup = prepare(spec, counts=counts, tiny=tiny, models_dir=models_dir)
    dm = setup.dm
    phases.label = dm.name
    # model calls in batches of at most the calibration's prompt batch (a GPU: exactly that, one program and one
    # set of kernel shapes for every phase; a CPU keeps quality.py's smaller batches, faster per sample there)
    setup = dataclasses.replace(setup, chunk=min(setup.chunk, len(setup.calib_prompts)))
    n = min(sqnr_samples or (TINY_SQNR_SAMPLES if tiny else SQNR_SAMPLES)[dm.task], len(setup.prompts))
    with phases("fp sample"):
        t0 = time.perf_counter()
        x_fp, traj = sample_set(dm, dm.params, setup.cond, setup.noise, setup.chunk, trajectory=True)
        fp_metrics = score(setup, x_fp, None, time.perf_counter() - t0)
        steps_in = trajectory_inputs(setup, traj, n)
    del traj
    channels = int(setup.noise.shape[-1])

    def info() -> dict:
        return {dm.name: {**setup_info(setup), "arch": dm.name, "batch_rows": setup.chunk,
                          "fp": {k: fp_metrics[k] for k in ("fd", "cond_acc", "sample_s")},
                          "seconds": time.perf_counter() - t_model, "phases": phases.rows}}

    ref_backend = "simulate" if "simulate" in backends else backends[0]
    rows: list[dict] = []
    for preset in presets:
        t0 = time.perf_counter()
        with phases(f"quantize {preset}"):
            q = jax.block_until_ready(dm.quantize(preset, setup.calib, backend=ref_backend, stats=setup.stats))
        quantize_s = time.perf_counter() - t0
        ref_params = upcast_bf16(set_backend(q, ref_backend))
        outputs: dict = {}  # the float and reference denoiser outputs along the trajectory, for every backend
        samples: dict[str, np.ndarray] = {}
        for be in [ref_backend] + [b for b in backends if b != ref_backend]:
            qb = set_backend(q, be)
            with fallbacks() as fell:
                with phases(f"sample {be}"):
                    samples[be], m = evaluate(setup, qb, x_fp)
                t0 = time.perf_counter()  # the backend's denoiser vs the float one and vs the reference backend
                with phases(f"sqnr {be}"):
                    sq = denoiser_sqnr_by_step(dm.model, dm.compute_params, {ref_backend: ref_params,
                                                                             be: upcast_bf16(qb)},
                                               steps_in, channels=channels, versus=ref_backend, jitter=JITTER,
                                               outputs=outputs)
                sqnr_s = time.perf_counter() - t0
            s = step_summary(sq["sqnr_db"][be], sq["steps"], sq["timesteps"])
            row: dict[str, Any] = {
                "model": dm.name, "task": dm.task, "preset": preset, "backend": be,
                **(env_row or {}),
                "samples": len(setup.prompts), "sqnr_samples": n,
                "psnr": m["psnr"], "ssim": m["ssim"], "fd": m["fd"], "cond_acc": m["cond_acc"],
                **{k: m[k] for k in ("motion_acc", "temporal_consistency") if k in m},
                "finite": m["finite"],
                "sqnr_mean": s["mean"], "sqnr_min": s["min"], "sqnr_worst_step": s["worst_step"],
                "sqnr_worst_timestep": s["worst_timestep"], "sqnr_db": sq["sqnr_db"][be],
                "steps": sq["steps"], "timesteps": sq["timesteps"],
                "reference_backend": ref_backend,
                "rounding_floor_db": sq["floor"], "rounding_floor_mean": float(np.mean(sq["floor"])),
                "fallbacks": fell,
                "quantize_s": quantize_s, "sample_s": m["sample_s"], "sqnr_s": sqnr_s,
            }
            if be != ref_backend:
                d = np.abs(samples[be] - samples[ref_backend])
                row.update(psnr_vs_ref=psnr(samples[be], samples[ref_backend]), max_abs_diff_vs_ref=float(d.max()),
                           mean_abs_diff_vs_ref=float(d.mean()))
                row.update(sqnr_vs_ref_db=sq["sqnr_vs"][be], sqnr_vs_ref_mean=float(np.mean(sq["sqnr_vs"][be])),
                           sqnr_vs_ref_min=float(np.min(sq["sqnr_vs"][be])),
                           denoiser_max_abs_vs_ref=float(np.max(sq["max_abs_vs"][be])))
            rows.append(row)
            print(f"  {dm.name:22s} {preset:14s} {be:8s} PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}  "
                  f"SQNR mean {s['mean']:5.1f} min {s['min']:5.1f} (step {s['worst_step']})"
                  + (f"  max|Δ| vs {ref_backend} {row['max_abs_diff_vs_ref']:.2e}" if be != ref_backend else "")
                  + (f"  fallbacks: {len(row['fallbacks'])}" if row["fallbacks"] else ""), flush=True)
            if save is not None:
                save(rows, info())
    return rows, info()


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _db(v: float | None) -> str:
    if v is None:
        return "–"
    return "∞" if v == float("inf") else f"{v:.2f}"


def to_markdown(rows: list[dict], models: dict, runs: list[dict], notes: list[str]) -> str:
    tiny = any(r.get("tiny") for r in rows)
    lines = [
        "# " + title("Quality of the quantized backends: fused kernels vs fake quantization vs float", tiny),
        "",
        "Generated by `benchmarks/quality_backends.py` on: " + "; ".join(
            f"{r['device']} ({r['platform']}, {r['cpu_count']} CPU cores), JAX {r['jax_version']}, {r['date']}, "
            f"{r['total_s'] / 60:.1f} min" + ("" if r.get("complete", True) else f" (cut short after {r['models_done']} "
                                               "model(s))") for r in runs) + ".",
        "",
        "Each preset is quantized once from the same calibration as `benchmarks/quality.py`; every backend runs "
        "the same integers (`simulate`: float32 fake quantization, the numerics reference; `xla`: integer "
        "`dot_general`; `pallas`: the fused kernels, GPU only). PSNR / SSIM: the backend's samples vs the float "
        "samples of the same machine from the same noise (pixels in [-1, 1]). Denoiser SQNR: at every step of the "
        "float sampler's trajectory (first `sqnr N` evaluation samples, both CFG halves), 10·log10(‖ε_fp‖² / "
        "‖ε_q − ε_fp‖²) of the prediction channels; mean, min and the step (model timestep) of the min. "
        "vs ref: against the run's reference backend (`simulate` where it ran) on the same machine: PSNR and max / "
        "mean absolute difference of the samples, the denoiser SQNR per step (mean / min); on the reference row "
        "its rounding floor: the mean SQNR of the reference backend against itself on inputs scaled by "
        f"1 + {JITTER:g} (float rounding alone flips activation "
        "rounding decisions, which then cascade through the blocks: two backends that agree to this level differ by "
        "rounding, not by a wrong kernel). Float matmuls at HIGHEST precision on "
        "every machine.",
        "",
        *[f"- {n}" for n in notes],
        *([""] if notes else []),
    ]
    for name, info in models.items():
        mrows = [r for r in rows if r["model"] == name]
        if not mrows:
            continue
        s = info["sampler"]
        lines += [
            f"## {name} ({TASK_TITLE[mrows[0]['task']]})",
            "",
            f"- {info['model']} (hidden {info['config']['hidden_size']}, depth {info['config']['depth']}); sampler "
            f"{s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}; {describe_eval_set(info)} "
            f"(this run: {info['samples']}), noise seed {info['eval_noise_seed']}; calibration "
            f"{info['calibration']['batches']} batches",
            "",
        ]
        head = ["preset", "backend", "device", "JAX", "date", "N", "PSNR dB", "SSIM", "FD", "acc.",
                "SQNR mean dB", "SQNR min dB (step, t)", "sqnr N", "vs ref: samples PSNR dB, max / mean abs. diff.",
                "vs ref: SQNR mean / min dB",
                "sample s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mrows:
            ref = r.get("reference_backend")
            cells = [f"`{r['preset']}`", f"`{r['backend']}`", r["device"], r["jax_version"], r["date"],
                     str(r["samples"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['fd']:.3f}",
                     f"{r['cond_acc']:.3f}", _db(r["sqnr_mean"]),
                     f"{_db(r['sqnr_min'])} ({r['sqnr_worst_step']}, {r['sqnr_worst_timestep']:g})",
                     str(r["sqnr_samples"]),
                     f"`{ref}`: {r['psnr_vs_ref']:.2f}, {r['max_abs_diff_vs_ref']:.2e} / {r['mean_abs_diff_vs_ref']:.1e}"
                     if "max_abs_diff_vs_ref" in r else "ref",
                     f"{_db(r['sqnr_vs_ref_mean'])} / {_db(r['sqnr_vs_ref_min'])}" if "max_abs_diff_vs_ref" in r
                     else f"ref; floor {_db(r.get('rounding_floor_mean'))} / {_db(min(r.get('rounding_floor_db') or [None]))}",
                     f"{r['sample_s']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        fell = [(r, f) for r in mrows for f in r.get("fallbacks", [])]
        if fell:
            lines += ["", "Fall-backs to `xla` (layers the kernels do not take):"]
            lines += [f"- `{r['preset']}` `{r['backend']}` on {r['device']}: {f}" for r, f in fell]
        lines += _cross_machine(mrows)
        lines += ["", "Per-step denoiser SQNR (dB) along the float trajectory:", ""]
        cols = [r for r in mrows]
        lines += ["| step | t | " + " | ".join(f"`{r['preset']}` `{r['backend']}` {r['device']}" for r in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        steps = cols[0]["steps"]
        for i, st in enumerate(steps):
            cells = [_db(r["sqnr_db"][i]) if i < len(r["sqnr_db"]) else "–" for r in cols]
            lines.append(f"| {st} | {cols[0]['timesteps'][i]:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _cross_machine(mrows: list[dict]) -> list[str]:
    """Kernel rows of one machine next to the ``simulate`` rows of another (a merged table)."""
    out = []
    for k in (r for r in mrows if r["backend"] == "pallas"):
        for s in (r for r in mrows if r["backend"] == "simulate" and r["preset"] == k["preset"]
                  and r["device"] != k["device"]):
            out.append(f"- `{k['preset']}`: `pallas` on {k['device']} vs `simulate` on {s['device']}: "
                       f"PSNR {k['psnr'] - s['psnr']:+.2f} dB, SSIM {k['ssim'] - s['ssim']:+.4f}, "
                       f"mean denoiser SQNR {k['sqnr_mean'] - s['sqnr_mean']:+.2f} dB, min "
                       f"{k['sqnr_min'] - s['sqnr_min']:+.2f} dB (N {k['samples']} vs {s['samples']})")
    return ["", "Across machines:"] + out if out else []


def write(out: Path, data: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=float))
    out.with_suffix(".md").write_text(to_markdown(data["rows"], data["models"], data["runs"], data["notes"]))
    print(f"wrote {out.with_suffix('.md')} and .json")


def merge(paths: list[str], out: Path) -> int:
    """One table of several runs' JSON (e.g. the CPU half and the GPU half)."""
    rows, models, runs, notes = [], {}, [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        rows += d["rows"]
        runs += d["runs"]
        notes += [n for n in d["notes"] if n not in notes]
        for name, info in d["models"].items():
            models.setdefault(name, info)
    order = {m: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: (order[r["model"]], r["preset"]))  # stable: each run's backend order kept
    write(out, {"runs": runs, "models": models, "rows": rows, "notes": notes})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, choices=[p for p in PRESETS if p != "fp"])
    ap.add_argument("--backends", nargs="+", default=DEFAULT_BACKENDS, choices=["simulate", "xla", "pallas"])
    ap.add_argument("--images", type=int, help=f"text-to-image samples (default {COUNTS['t2i']}, tiny {TINY_COUNTS['t2i']})")
    ap.add_argument("--videos", type=int, help=f"text-to-video samples (default {COUNTS['t2v']}, tiny {TINY_COUNTS['t2v']})")
    add_per_class_arg(ap)
    ap.add_argument("--sqnr-samples", type=int, help="evaluation samples whose float trajectory the per-step SQNR "
                    f"runs on (default {SQNR_SAMPLES}, tiny {TINY_SQNR_SAMPLES})")
    ap.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "default"],
                    help="jax_default_matmul_precision of the float matmuls (default highest: no TF32 on a GPU)")
    ap.add_argument("--tiny", action="store_true", help="a handful of samples (smoke run on stand-in models)")
    ap.add_argument("--note", action="append", default=[], help="a line for the table's notes (repeatable), e.g. "
                    "why the sample counts are smaller than the defaults")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join these runs' JSON into one table (runs nothing)")
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality_backends, _tiny with --tiny)")
    args = ap.parse_args(argv)
    out = results_path(REPO / "benchmarks" / "results" / "quality_backends", args.out, args.tiny)
    if args.merge:
        return merge(args.merge, out)
    from vidq_jax.bundled import ModelMissing

    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    backends, notes = list(dict.fromkeys(args.backends)), list(args.note)
    if "pallas" in backends and (why := pallas_unavailable()):
        backends.remove("pallas")
        env = environment()
        notes.append(f"`pallas` skipped on {env['gpu']} ({env['date']}): {why}")
        print(f"pallas skipped: {why}")
    if not backends:
        print("quality_backends.py: no backend left to run")
        return 2
    t0 = time.perf_counter()
    env = environment()
    env_row = {"device": env["gpu"], "platform": env["platform"], "jax_version": env["jax_version"],
               "date": env["date"], "cpu": platform.processor() or platform.machine()}
    counts = {"t2i": args.images, "t2v": args.videos, "c2i": args.per_class}
    rows, models = [], {}

    def save(model_rows: list[dict], model_info: dict, complete: bool = False) -> None:
        """The JSON and table of what is measured so far: after every (model, backend) row."""
        done = {**models, **model_info}
        run = {**env_row, "cpu_count": os.cpu_count(), "backends": backends, "presets": args.presets,
               "matmul_precision": args.matmul_precision, "tiny": args.tiny, "total_s": time.perf_counter() - t0,
               "models_done": len(models) + complete, "complete": complete and len(done) == len(args.models),
               "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write(out, {"runs": [run], "models": done, "rows": rows + mark_toy(model_rows, args.tiny), "notes": notes})

    for spec in args.models:
        print(spec, flush=True)
        try:
            r, info = run_model(spec, presets=args.presets, backends=backends, counts=counts,
                                sqnr_samples=args.sqnr_samples, tiny=args.tiny, models_dir=args.models_dir,
                                env_row=env_row, save=save)
        except ModelMissing as e:
            print(f"quality_backends.py: {e}")
            return 2
        save(r, info, complete=True)
        rows += r
        models.update(info)
    return 0


if __name__ == "__main__":
    if hasattr(faulthandler, "register"):  # killed by a time limit (`timeout`): the Python stack says where
        faulthandler.register(signal.SIGTERM, chain=True)
    raise SystemExit(main())

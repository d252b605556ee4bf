"""Q-DiT's ablation on the bundled trained models (issue 15): what each ingredient buys at W4A8.

    python -m benchmarks.quality_qdit --backend simulate --images 16 --videos 2   # the committed CPU table
    python -m benchmarks.quality_qdit --images 64 --videos 16 --population 50 --generations 10   # GPU
    python -m benchmarks.quality_qdit --tiny --models t2i                         # smoke run
    python -m benchmarks.quality_qdit --models c2i --backend simulate --per-class 1 --population 3 \
        --generations 1 --top-k 2 --search-samples 4 --out benchmarks/results/quality_qdit_dit   # the DiT (CPU)
    python -m benchmarks.quality_qdit --models c2i --per-class 8 --population 24 --generations 8 --top-k 6 \
        --search-samples 72 --search-budget 110 --out OUT/quality_qdit_dit_gpu   # the DiT at size (GPU, ~6 min)

On a GPU every row samples its 72 images in one sampler call and each search candidate is one call of
``--search-samples`` (<= 72) images; the whole search runs one compiled sampler (``vidq_jax.quant.search``:
the genome only selects record variants) and never evaluates a genome twice. Rows without the search come
first, then the search, then the searched rows; the JSON / markdown are rewritten after every row (a run
cut short keeps its finished rows) and ``--search-budget`` stops breeding generations after that many
seconds. ``--max-bitops R`` constrains the search by BitOps (<= R x the all-128 genome's) instead of the
mean group size.

Rows (Q-DiT paper's ablation, then ViDiT-Q on the same model), every one sampled from the same prompts and
noise as the float model (:mod:`benchmarks.quality`: FD and class accuracy from the shipped feature network,
PSNR / SSIM vs FP; calibration on demo prompts' float trajectories, :func:`benchmarks.quality.prepare`):

1. ``fp``;
2. ``rtn-w4a8`` — the baseline: round-to-nearest per-output-channel W4, static per-tensor A8 (calibrated);
3. ``+ group 128`` — W4 in groups of 128 input channels (the largest divisor of C_in below 128 where 128 does
   not divide it); activations still static per tensor (this package has no static per-group activation
   scales; Q-DiT's row groups both sides);
4. ``+ dynamic act`` = ``qdit-w4a8``: weights and activations in groups of 128, activations asymmetric and
   recomputed per token per group at every call;
5. ``+ search`` — ``qdit-w4a8`` with the group sizes of the evolutionary search
   (:func:`vidq_jax.quant.search.search_groups`; fitness: FD of ``--search-samples`` samples of other captions
   of the bank from other noise, :func:`vidq_jax.search_groups.feature_fitness`);
6. ``+ GPTQ`` — row 5 with GPTQ weights (``w_method="gptq"``, Hessians from the calibration batches, block by
   block with the earlier blocks quantized);
7. ``qdit-w6a8`` (with the searched group sizes: none of the 6-bit layers is searched separately);
8. ``viditq-w4a8`` — ViDiT-Q's W4A8 (per-channel weights, per-token activations, smoothing + rotation).

The bundled models' widths (256 / 1024 for PixArt, 192 / 768 for STDiT3) leave the search {32, 64, 128}
(+192 on STDiT3): Q-DiT's constraint "mean group >= 128" would allow only all-128, so the search here runs
under ``--min-mean-group`` (default 96); the emoji DiT (``c2i``: hidden 256, MLP 1024) has the same choice.
Writes ``benchmarks/results/quality_qdit.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import jax

from benchmarks.common import REPO, results_path, title
from benchmarks.quality import (TASK_TITLE, add_model_args, add_per_class_arg, describe_eval_set, evaluate, prepare,
                                run_and_write, setup_info, write_results)
from benchmarks.quant_report import _bits_label, _fmt
from vidq_jax.bundled import weight_bytes
from vidq_jax.quant import LayerQuant, QuantConfig, quantize_params
from vidq_jax.quant.search import SearchSettings, bitops, mean_group, search_groups
from vidq_jax.search_groups import feature_fitness

TINY_SEARCH = {"population": 2, "generations": 1, "top_k": 1, "samples": 2}
SEARCH_SAMPLES = {"t2i": 8, "t2v": 2, "c2i": 9}


def rtn_w4a8(group: int | None = None) -> QuantConfig:
    """The baseline: RTN per-channel W4 (or groups of ``group``), static per-tensor A8."""
    lq = LayerQuant(w_bits=4, a_bits=8, a_granularity="tensor", a_static=True)
    if group is None:
        return QuantConfig("rtn-w4a8", default=lq)
    return QuantConfig(f"rtn-w4a8-g{group}", default=lq.replace(w_granularity="group", w_group_size=group,
                                                                 fit_group_size=True))


def with_method(cfg: QuantConfig, method: str) -> QuantConfig:
    return cfg.replace(name=f"{cfg.name}+{method}", default=cfg.default.replace(w_method=method))


def search_settings(args: argparse.Namespace, search: dict) -> SearchSettings:
    """The search's settings from the command line (``--max-bitops``: the BitOps constraint instead of the mean
    group size)."""
    bitops = {} if args.max_bitops is None else {"constraint": "bitops", "max_bitops": args.max_bitops}
    return SearchSettings(population=search["population"], generations=search["generations"], top_k=search["top_k"],
                          min_mean_group=args.min_mean_group, seed=args.search_seed, **bitops)


def run(spec: str, args: argparse.Namespace, on_row=None) -> tuple[list[dict], dict]:
    """The ablation rows of one model: first the rows without the search (fp, RTN, + group, + dynamic act,
    ViDiT-Q), then the search, then the searched rows; ``on_row(rows, models)`` after every row (the caller
    writes the results so far: a run stopped by a time limit keeps its finished rows)."""
    setup = prepare(spec, counts={"t2i": args.images, "t2v": args.videos, "c2i": args.per_class}, tiny=args.tiny,
                    models_dir=args.models_dir)
    dm, calib, stats = setup.dm, setup.calib, setup.stats
    backend = args.backend
    qdit = QuantConfig.preset("qdit-w4a8", backend=backend)
    search = dict(TINY_SEARCH) if args.tiny else {"population": args.population, "generations": args.generations,
                                                  "top_k": args.top_k,
                                                  "samples": args.search_samples or SEARCH_SAMPLES[dm.task]}
    settings = search_settings(args, search)
    info = {**setup_info(setup), "search": {**search, "constraint": settings.describe(), "pending": True}}
    plan = None  # the searched rows come after the search

    variants: list[tuple[str, str, QuantConfig | None, bool]] = [
        ("fp", "float", None, False),
        ("rtn-w4a8", "RTN, per-channel W4, static per-tensor A8", rtn_w4a8(), False),
        ("+ group 128", "W4 groups of 128, static per-tensor A8", rtn_w4a8(128), False),
        ("+ dynamic act (qdit-w4a8)", "W4/A8 groups of 128, dynamic per-token-per-group A8", qdit, False),
        ("+ search (Q-DiT)", "qdit-w4a8 with the searched group sizes", qdit, True),
        ("+ GPTQ", "searched group sizes, GPTQ weights", with_method(qdit, "gptq"), True),
        ("qdit-w6a8 (searched groups)", "W6A8, searched group sizes",
         QuantConfig.preset("qdit-w6a8", backend=backend), True),
        ("viditq-w4a8", "ViDiT-Q W4A8", QuantConfig.preset("viditq-w4a8", backend=backend), False),
    ]
    fp_samples, rows = None, []
    order = sorted(range(len(variants)), key=lambda i: (variants[i][3], i))  # unsearched rows first
    for i in order:
        name, what, cfg, searched = variants[i]
        if searched and plan is None:  # the search (its own samples: other labels / captions, other noise)
            plan, info["search"] = run_search(dm, qdit, search, settings, args, batch=setup.chunk)
        p = plan if searched else None
        t0 = time.perf_counter()
        if cfg is None:
            q = dm.params
        else:
            cfg = cfg if cfg.default.backend == backend else cfg.replace(default=cfg.default.replace(backend=backend))
            if p is not None:  # the plan's rules carry the searched config's W4: a W6 config keeps its own bits
                p = dataclasses.replace(p, rules=tuple(dataclasses.replace(r, w_bits=cfg.default.w_bits)
                                                       for r in p.rules))
            q = jax.block_until_ready(quantize_params(dm.params, calib, model=dm.model, config=cfg, plan=p,
                                                      stats=stats))
        quantize_s = time.perf_counter() - t0
        x, metrics = evaluate(setup, q, fp_samples)
        fp_samples = x if fp_samples is None else fp_samples
        metrics.pop("feature_dim")
        row = {"model": dm.name, "task": dm.task, "row": name, "what": what,
               "bits": "FP" if cfg is None else _bits_label(cfg, dm.params), "bytes": weight_bytes(q),
               **metrics, "quantize_s": quantize_s}
        rows.append(row)
        rows.sort(key=lambda r: [v[0] for v in variants].index(r["row"]))
        print(f"  {dm.name:22s} {name:28s} FD {row['fd']:8.3f} acc {row['cond_acc']:.3f} PSNR {row['psnr']:6.2f} "
              f"[{quantize_s + row['sample_s']:.0f} s]", flush=True)
        if on_row is not None:
            on_row(rows, {dm.name: info})
    return rows, {dm.name: info}


def run_search(dm, qdit: QuantConfig, search: dict, settings: SearchSettings, args: argparse.Namespace, *,
               batch: int) -> tuple[Any, dict]:
    """Q-DiT's evolutionary search on ``dm`` (one compile for all candidates: ``vidq_jax.quant.search``; fitness =
    FD of ``search["samples"]`` samples in sampler calls of ``batch``). Returns ``(plan, info)``."""
    t0 = time.perf_counter()
    fitness, fit_info = feature_fitness(dm, samples=search["samples"], seed=args.search_seed, batch=batch)
    res = search_groups(dm.params, fitness, model=dm.model, config=qdit, settings=settings, progress=False,
                        log=lambda s: print(f"    search [{time.perf_counter() - t0:.0f} s] " + s, flush=True),
                        time_budget_s=args.search_budget)
    search_info = {**search, **fit_info, "min_mean_group": args.min_mean_group, "constraint": settings.describe(),
                   "best_fd": res.best_fitness, "best_mean_group": mean_group(res.best),
                   "best_bitops_vs_seed": bitops(res.genes, res.best) / bitops(res.genes, [g.seed for g in res.genes]),
                   "layers": len(res.genes), "evaluated": len(res.evaluated), "generations_run": len(res.history),
                   "seconds": time.perf_counter() - t0, "history": [
                       {k: h[k] for k in ("generation", "population_best", "population_mean")} for h in res.history],
                   "group_sizes": {g.path: int(b) for g, b in zip(res.genes, res.best)}}
    seed = ",".join(str(g.seed) for g in res.genes)
    search_info["seed_fd"] = res.evaluated.get(seed)
    print(f"  search: best FD {res.best_fitness:.4g} (all-128 seed {search_info['seed_fd']}), mean group "
          f"{mean_group(res.best):.1f}, {len(res.evaluated)} candidates [{search_info['seconds']:.0f} s]", flush=True)
    return res.plan(), search_info


def to_markdown(rows: list[dict], models: dict, env: dict, total_s: float) -> str:
    tiny = bool(env.get("tiny"))
    def size_of(info: dict) -> str:
        if info.get("task") == "c2i":
            classes = len(set(info["prompts"]))
            k = info["samples"] // classes
            return f"{k} image{'s' if k != 1 else ''} per class × {classes} classes"
        return f"{info['samples']} {'videos' if 't2v' in (info.get('task') or info.get('eval_bank') or '') else 'images'}"

    size = ", ".join(size_of(info) for info in models.values())
    where = "GPU" if env["platform"] == "gpu" else "CPU"
    lines = [
        "# " + title(f"Q-DiT ablation on the bundled trained models ({where}, {size} per row)", tiny),
        "",
        f"{env['date']}, JAX {env['jax_version']} on {env['platform']} ({env['gpu']}, {env['cpu_count']} CPU cores), "
        f"`{env['backend']}` backend; generated by `benchmarks/quality_qdit.py` in {total_s / 60:.1f} min. "
        "Rows as in Q-DiT's ablation (module docstring of the script); FD / acc. from the shipped feature "
        "network (lower FD is better; few samples bias FD upward, compare rows of one model), PSNR / SSIM vs the FP "
        "samples from the same noise.",
        "",
    ]
    for name, info in models.items():
        mrows = [r for r in rows if r["model"] == name]
        video = mrows[0]["task"] == "t2v"
        s, sr = info["sampler"], info["search"]
        lines += [
            f"## {name} ({TASK_TITLE[mrows[0]['task']]})",
            "",
            f"- {describe_eval_set(info)}, noise seed {info['eval_noise_seed']}; "
            f"sampler {s['sampler']} {s['steps']} steps, CFG {s['guidance_scale']:g}; calibration "
            f"{info['calibration']['batches']} batches",
            f"- search: population {sr['population']}, {sr.get('generations_run', sr['generations'])} generation(s), "
            f"top-k {sr['top_k']}, "
            + ("not run yet (rows so far)" if sr.get("pending") else
               f"{sr['samples']} samples of `{sr['bank']}` per candidate (seed {sr['seed']}), "
               f"{sr.get('constraint') or 'mean group >= %g' % sr['min_mean_group']}; {sr['evaluated']} candidates "
               f"over {sr['layers']} layers in {sr['seconds']:.0f} s; best search FD {sr['best_fd']:.3f} (all-128 "
               f"seed {_fmt(sr['seed_fd'], 3)}), mean group {sr['best_mean_group']:.1f}"),
            "",
        ]
        head = ["row", "bits", "bytes", "FD", "acc.", "PSNR dB", "SSIM"] + (["motion", "temporal"] if video else [])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mrows:
            cells = [r["row"], r["bits"], str(r["bytes"]), f"{r['fd']:.3f}", f"{r['cond_acc']:.3f}", f"{r['psnr']:.2f}",
                     f"{r['ssim']:.4f}"]
            if video:
                cells += [_fmt(r.get("motion_acc"), 3), _fmt(r.get("temporal_consistency"), 4)]
            lines.append("| " + " | ".join(cells) + " |")
        fp_fd = next(r["fd"] for r in mrows if r["row"] == "fp")
        if fp_fd > min(r["fd"] for r in mrows):
            lines += ["", f"FP is not the lowest FD here: with {info['samples']} samples FD differences between rows are "
                      "within the estimate's noise; PSNR / SSIM vs FP (same noise) separate the rows."]
        sizes: dict[int, int] = {}
        for g in sr.get("group_sizes", {}).values():
            sizes[g] = sizes.get(g, 0) + 1
        if sizes:
            lines += ["", "Searched group sizes: " + ", ".join(f"{n} layers at {g}" for g, n in sorted(sizes.items()))]
        lines += [""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--images", type=int, help="text-to-image samples (default as benchmarks/quality.py)")
    ap.add_argument("--videos", type=int, help="text-to-video samples (default as benchmarks/quality.py)")
    add_per_class_arg(ap)
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--search-samples", type=int, help=f"samples per search candidate (default {SEARCH_SAMPLES})")
    ap.add_argument("--search-seed", type=int, default=1)
    ap.add_argument("--min-mean-group", type=float, default=96.0)
    ap.add_argument("--search-budget", type=float, help="seconds after which the search breeds no new generation")
    ap.add_argument("--max-bitops", type=float, help="search constraint instead of --min-mean-group: BitOps at most this "
                    "multiple of the all-128 genome's (vidq_jax.quant.search.bitops)")
    ap.add_argument("--tiny", action="store_true", help="a handful of samples, a two-candidate search")
    ap.add_argument("--backend", default="xla", choices=["simulate", "xla", "pallas"])
    ap.add_argument("--out", help="output stem (.json/.md; default benchmarks/results/quality_qdit)")
    ap.add_argument("--refresh", action="store_true", help="rebuild the markdown from the JSON only")
    args = ap.parse_args(argv)
    if args.refresh:
        out = results_path(REPO / "benchmarks" / "results" / "quality_qdit", args.out, args.tiny)
        d = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(to_markdown(d["rows"], d["models"], d["environment"], d["total_s"]))
        print(f"wrote {out.with_suffix('.md')}")
        return 0
    t0 = time.perf_counter()
    done: tuple[list, dict] = ([], {})  # finished models' rows: the partial writes keep them

    def run_one(spec: str):
        r, info = run(spec, args, on_row=lambda rows, models: write_results(
            args, "quality_qdit", to_markdown, done[0] + rows, {**done[1], **models}, t0))
        done[0].extend(r)
        done[1].update(info)
        return r, info

    return run_and_write(args, run_one, "quality_qdit", to_markdown, t0)


if __name__ == "__main__":
    raise SystemExit(main())

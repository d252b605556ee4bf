"""Where the time of one denoising step goes: a GPU kernel profile, grouped by kind of kernel.

Runs the jitted step of ``bench_e2e.py`` (same models, same random XL weights, CFG batch 2) under
``jax.profiler.trace`` for each variant, reads the Perfetto trace that JAX writes, keeps the kernels
of the GPU stream lines, and sums their durations per category (GEMM by kind, attention, Pallas
quantizer / producer, XLA fusions, copies / transposes). Prints and writes a markdown table
(``benchmarks/results/profile_step.md``) + JSON with the 25 most expensive kernels per variant.

    python benchmarks/profile_step.py [--models pixart,stdit] [--variants bf16,w8a8,w8a8@xla] [--steps 3]

``VARIANT@xla`` / ``VARIANT@triton`` picks the activation quantizer of the Pallas GEMMs
(``$PALLAS_KERNELS_ACT_QUANT``, read at trace time).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import tempfile
from pathlib import Path

import jax

from common import REPO, environment, median_time  # noqa: E402  (sets sys.path)

from bench_e2e import MODELS, VARIANTS, build, step_fn  # noqa: E402
from pallas_kernels.ops.w8a8_linear import ACT_QUANT_ENV  # noqa: E402
from vidq_jax.quant import QuantConfig, quantize_params  # noqa: E402

# first match wins; patterns are matched against the lower-cased kernel name
CATEGORIES = [
    ("attention (cuDNN / flash)", r"cudnn|flash|fmha|sdpa|attn_fwd"),
    ("int8 GEMM: Pallas Mosaic (wgmma + epilogue)", r"mosaic|int8_gemm|wgmma_int8|_s8_|ws_gemm"),
    ("Pallas Triton (quantize / producer / w4a8)", r"quantize|producer|w4a8|triton"),
    ("GEMM: cuBLAS/cuBLASLt (bf16 or int8)", r"gemm|xmma|cublas|cutlass|sm90_|sm80_|nvjet"),
    ("transpose / copy", r"transpose|copy|memcpy|memset"),
    ("XLA reduction fusions (LayerNorm, absmax, ...)", r"reduce|reduction"),
    ("XLA elementwise fusions", r"fusion|loop_|broadcast|convert|add|multiply"),
]


def categorize(name: str) -> str:
    low = name.lower()
    for cat, pat in CATEGORIES:
        if re.search(pat, low):
            return cat
    return "other"


def _load_trace(folder: Path) -> dict:
    files = sorted(folder.rglob("*.trace.json.gz")) + sorted(folder.rglob("perfetto_trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no trace file under {folder}: {[str(p) for p in folder.rglob('*')][:20]}")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def gpu_kernel_times(trace: dict) -> tuple[dict[str, float], dict]:
    """{kernel name: total µs} over the GPU stream lines, and a debug record of the lines seen."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    pnames, tnames = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            pnames[e["pid"]] = e.get("args", {}).get("name", "")
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            tnames[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    gpu_pids = {p for p, n in pnames.items() if "gpu" in n.lower() and "host" not in n.lower()}
    # kernels live on "Stream #..." lines; "XLA Ops"/"XLA Modules" lines repeat the same time
    stream = {k for k, n in tnames.items() if k[0] in gpu_pids and "stream" in n.lower()}
    times: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in stream:
            times[e.get("name", "?")] += float(e.get("dur", 0.0))
    debug = {"gpu_processes": [pnames[p] for p in gpu_pids],
             "stream_lines": sorted({tnames[k] for k in stream})[:20]}
    if not stream:  # say what the trace holds instead
        debug["all_processes"] = sorted(set(pnames.values()))[:30]
        debug["all_lines"] = sorted(set(tnames.values()))[:40]
    return dict(times), debug


def profile_variant(step, args: tuple, steps: int) -> tuple[dict[str, float], dict]:
    jax.block_until_ready(step(*args))  # compile + warm
    jax.block_until_ready(step(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                out = step(*args)
            jax.block_until_ready(out)
        times, debug = gpu_kernel_times(_load_trace(Path(d)))
    return {k: v / steps for k, v in times.items()}, debug


def summarize(times: dict[str, float]) -> dict:
    cats: dict[str, float] = collections.defaultdict(float)
    for k, v in times.items():
        cats[categorize(k)] += v
    total = sum(times.values())
    top = sorted(times.items(), key=lambda kv: -kv[1])[:25]
    return {"gpu_busy_ms": total / 1e3,
            "categories_ms": {k: round(v / 1e3, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [(k[:120], round(v / 1e3, 3), categorize(k)) for k, v in top]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="pixart,stdit")
    ap.add_argument("--variants", default="bf16,w8a8")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "profile_step.json"))
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    results = {"environment": environment(), "rows": []}
    for m in args.models.split(","):
        model, params, inputs = build(m, args.tiny)
        for name in args.variants.split(","):
            # "w8a8@xla": the same variant with the activation quantizer chosen by $PALLAS_KERNELS_ACT_QUANT
            base, _, quantizer = name.partition("@")
            os.environ[ACT_QUANT_ENV] = quantizer or "auto"
            layer = VARIANTS[base]
            p = params if layer is None else quantize_params(params, None, model=model, config=QuantConfig(base, default=layer))
            step = step_fn(model)  # a fresh jit: the quantizer choice is read at trace time
            timing = median_time(step, [(p, inputs, 4.5)], iters=10, reps=5, warmup=1)
            times, debug = profile_variant(step, (p, inputs, 4.5), args.steps)
            row = {"model": m, "shape": MODELS[m][1], "variant": name, "step_ms": round(timing["median_ms"], 3),
                   **summarize(times), "trace_lines": debug}
            print(json.dumps(row, indent=1), flush=True)
            results["rows"].append(row)
            del p
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    env = results["environment"]
    lines = [f"# GPU time of one denoising step by kernel kind ({env['gpu']}, JAX {env['jax_version']}, {env['date']})",
             "", "Sum of kernel durations on the GPU stream lines of a `jax.profiler` trace, per step (ms).", ""]
    for r in results["rows"]:
        lines += [f"## {r['model']} {r['variant']}: step {r['step_ms']:.2f} ms, {r['gpu_busy_ms']:.2f} ms GPU busy", "",
                  "| kernel kind | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.2f} | {100 * v / max(r['gpu_busy_ms'], 1e-9):.0f} % |" for k, v in r["categories_ms"].items()]
        lines += ["", "<details><summary>top kernels</summary>", "", "| kernel | ms | kind |", "|---|---|---|"]
        lines += [f"| `{k}` | {v:.3f} | {c} |" for k, v, c in r["top_kernels_ms"]]
        lines += ["", "</details>", ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

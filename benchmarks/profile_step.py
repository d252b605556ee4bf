"""Where the time of one denoising step goes: a GPU kernel profile, grouped by kind of kernel.

Runs the jitted step of ``bench_e2e`` (:mod:`benchmarks.xl_step`: same models, same random XL
weights, CFG batch 2) under ``jax.profiler.trace`` for each variant, reads the Perfetto trace that JAX
writes, keeps the kernels of the GPU stream lines, and sums their durations per category (GEMM by
kind, attention, Pallas quantizer / producer, XLA fusions, copies / transposes). Prints and writes a
markdown table (``benchmarks/results/profile_step.md``) + JSON with the 25 most expensive kernels
per variant.

    python -m benchmarks.profile_step [--models pixart,stdit] [--variants bf16,w8a8,w8a8@xla] [--steps 3]

``VARIANT@xla`` / ``VARIANT@triton`` picks the activation quantizer of the Pallas GEMMs (the
``act_quant`` option of ``pallas_kernels.w8a8_linear``, forced for the whole model through the
kernels' debug override ``$PALLAS_KERNELS_DEBUG``, read at trace time).
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import REPO, environment, median_time, results_path, title
from benchmarks.xl_step import MODELS, VARIANTS, build, profile_variant, step_fn, summarize
from pallas_kernels._debug import DEBUG_ENV
from vidq_jax.quant import QuantConfig, quantize_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="pixart,stdit")
    ap.add_argument("--variants", default="bf16,w8a8")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="result JSON (default benchmarks/results/profile_step.json, "
                    "profile_step_tiny.json with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (smoke run; every row and title says so)")
    args = ap.parse_args(argv)
    results = {"environment": {**environment(), "tiny": args.tiny}, "rows": []}
    user_debug = os.environ.get(DEBUG_ENV, "")  # other debug options of the caller stay in force
    for m in args.models.split(","):
        model, params, inputs = build(m, args.tiny)
        for name in args.variants.split(","):
            # "w8a8@xla": the same variant with the activation quantizer forced to xla (act_quant=xla)
            base, _, quantizer = name.partition("@")
            os.environ[DEBUG_ENV] = ",".join(filter(None, [user_debug, quantizer and f"act_quant={quantizer}"]))
            layer = VARIANTS[base]
            p = params if layer is None else quantize_params(params, None, model=model, config=QuantConfig(base, default=layer))
            step = step_fn(model)  # a fresh jit: the quantizer choice is read at trace time
            timing = median_time(step, [(p, inputs, 4.5)], iters=10, reps=5, warmup=1)
            times, debug = profile_variant(step, (p, inputs, 4.5), args.steps)
            row = {"model": m, "shape": "toy size" if args.tiny else MODELS[m][1], "variant": name, "tiny": args.tiny,
                   "step_ms": round(timing["median_ms"], 3), **summarize(times), "trace_lines": debug}
            print(json.dumps(row, indent=1), flush=True)
            results["rows"].append(row)
            del p
    out = results_path(REPO / "benchmarks" / "results" / "profile_step.json", args.out, args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    env = results["environment"]
    heading = f"GPU time of one denoising step by kernel kind ({env['gpu']}, JAX {env['jax_version']}, {env['date']})"
    lines = ["# " + title(heading, args.tiny),
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

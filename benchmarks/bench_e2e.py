"""One jitted denoising step (CFG batch 2) of PixArt-XL/2 at 1024 px and STDiT-XL/2 at 16×512×512:
bf16 vs W8A8 vs W4A8, step latency, weight bytes and peak GPU memory, measured in one run.

Model shapes come from ``../shared/fixtures/xl_keys`` (the released checkpoints' key tables are
converted to find the config and parameter tree); weights are random (drawn on the device).
A "step" is the model forward on the batched [cond; uncond] rows plus the guidance combine — what a
sampler calls once per step. Quantized variants quantize every Dense inside the transformer blocks
(embedders, t_block and the final layer stay bf16, as ViDiT-Q) with symmetric per-channel weights
and dynamic per-token int8 activations on the ``pallas`` backend (fused kernels; falls back to XLA
int8 where a kernel does not apply).

    python -m benchmarks.bench_e2e [--models pixart,stdit] [--variants bf16,w8a8,w4a8,viditq-w8a8] [--out FILE]

Variants: the layer settings of ``benchmarks.xl_step.VARIANTS`` (``w8a8``, ``w4a8``: symmetric weights,
no balancing; ``w8a8-rot``: with the online Hadamard rotation) or any quantization preset
(``viditq-w8a8``, ``viditq-w4a8``: as ``quantize_params`` makes them, calibrated on the step's inputs;
their asymmetric weights take the zero point inside the GEMM epilogue; FP8 e4m3 W8A8: ``dynamic-fp8``
(plain) and ``viditq-fp8`` (smoothing + online rotation), the rows whose ``method`` contains ``fp8``).
The block's gated residual adds (attn/proj, cross_attn/proj, mlp/fc2) run in the quantized GEMMs'
epilogues through the Dense seam.

    python -m benchmarks.bench_e2e --variants bf16,w8a8,viditq-w8a8,viditq-w4a8,dynamic-fp8,viditq-fp8 --profile 2

``NAME@opt=val[+opt=val]``: the variant ``NAME`` traced with the kernels' debug options forced
(``$PALLAS_KERNELS_DEBUG``, read at trace time; e.g. ``viditq-w8a8@fuse_producer=0``: the rotated inputs'
producers as XLA passes, the A/B of the fused producer in the same run); the quantized params of one
``NAME`` are made once and shared by its ``@`` rows.

Writes ``benchmarks/results/e2e.json`` and ``e2e.md`` (rows: model × method with ``gpu``,
``jax_version``, ``date``, times, ``speedup_vs_bf16``, weight bytes and their ratio to bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from pallas_kernels._debug import DEBUG_ENV
from benchmarks.common import REPO, environment, median_time, peak_memory_bytes, results_path, title
from benchmarks.xl_step import VARIANTS, build, profile_variant, step_fn, summarize
from vidq_jax.checkpoint import params_nbytes
from models.families import family_of
from vidq_jax.quant import PRESETS, QuantConfig, quantize_params


def variant_config(name: str) -> QuantConfig | None:
    """The quantization recipe of a row: a layer setting of :data:`benchmarks.xl_step.VARIANTS` applied to
    every Dense (embedders, t_block, final layer stay bf16), or a real preset (``viditq-w8a8``: smoothing
    + online rotation, the preset's own asymmetric weights) on the ``pallas`` backend, calibrated on the
    step's own inputs."""
    if name in PRESETS:
        return QuantConfig.preset(name, backend="pallas")
    layer = VARIANTS[name]
    return None if layer is None else QuantConfig(name, default=layer)

def linear_weight_bytes(model, params) -> int:
    """Bytes of the Dense kernels inside transformer blocks (quantized or not), incl. scales."""
    total = 0
    fam = family_of(model)
    for k, v in params.items():
        if fam.block_of(k + "/"):
            total += sum(
                x.nbytes for path, x in jax.tree_util.tree_flatten_with_path(v)[0] if "kernel" in jax.tree_util.keystr(path)
            )
    return total


def run(model_name: str, variants: list[str], iters: int, tiny: bool = False, profile_steps: int = 0) -> list[dict]:
    print(f"[{model_name}] building {'tiny' if tiny else 'XL'} model from xl_keys ...", flush=True)
    t0 = time.perf_counter()
    model, params, inputs = build(model_name, tiny)
    jax.block_until_ready(params)
    print(f"[{model_name}] params ready in {time.perf_counter() - t0:.1f} s", flush=True)
    step = step_fn(model)
    base_bytes = params_nbytes(params)
    base_linear = linear_weight_bytes(model, params)
    rows, base_ms = [], None
    user_debug = os.environ.get(DEBUG_ENV, "")  # the caller's own debug options stay in force
    made: dict = {}  # quantized params per base variant, shared by its "@" rows
    for name in variants:
        base, _, debug = name.partition("@")
        os.environ[DEBUG_ENV] = ",".join(filter(None, [user_debug, debug.replace("+", ",")]))
        row_step = step_fn(model) if debug else step  # a fresh jit: debug options are read at trace time
        config = variant_config(base)
        if config is None:
            p = params
        elif base in made:
            p = made[base]
        else:
            t0 = time.perf_counter()
            p = quantize_params(params, [inputs], model=model, config=config)
            jax.block_until_ready(p)
            print(f"[{model_name}/{name}] quantized in {time.perf_counter() - t0:.1f} s", flush=True)
            if any(v.partition("@")[0] == base for v in variants[variants.index(name) + 1:]):
                made[base] = p
        t0 = time.perf_counter()
        out = row_step(p, inputs, 4.5)
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t0
        finite = bool(jnp.isfinite(out).all())
        t = median_time(row_step, [(p, inputs, 4.5)], iters=iters, reps=5, warmup=1)
        profile = None
        if profile_steps:  # kernel-time breakdown of the same compiled step (benchmarks.xl_step)
            profile = summarize(profile_variant(row_step, (p, inputs, 4.5), profile_steps)[0])
        if name == "bf16":
            base_ms = t["median_ms"]
            ref_out = out
        rel = float(jnp.linalg.norm((out - ref_out).astype(jnp.float32)) / jnp.linalg.norm(ref_out.astype(jnp.float32))) if base_ms else None
        nbytes = params_nbytes(p)
        lin = linear_weight_bytes(model, p)
        row = {
            "model": f"{model_name} [toy size]" if tiny else {"pixart": "PixArt-XL/2 1024px (latent 128x128)",
                                                             "stdit": "STDiT-XL/2 16x512x512 (latent 16x64x64)",
                                                             "dit": "DiT-XL/2 256px (latent 32x32)"}[model_name],
            "method": name,
            "tiny": tiny,
            "batch": 2,
            "compile_s": round(compile_s, 2),
            **{k: round(v, 3) for k, v in t.items()},
            "speedup_vs_bf16": round(base_ms / t["median_ms"], 3) if base_ms else None,
            "weight_bytes": nbytes,
            "weight_bytes_ratio_vs_bf16": round(nbytes / base_bytes, 4),
            "block_linear_bytes": lin,
            "block_linear_bytes_ratio_vs_bf16": round(lin / base_linear, 4),
            "rel_l2_vs_bf16_output": None if name == "bf16" else round(rel, 5),
            "output_finite": finite,
            "peak_memory_bytes": peak_memory_bytes(),
            **environment(),
            **({"profile": profile} if profile else {}),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del p
    os.environ[DEBUG_ENV] = user_debug
    return rows


def write_md(rows: list[dict], path: Path) -> None:
    env = rows[0]
    lines = [
        "# " + title(f"One denoising step (CFG batch 2), {env['gpu']}, JAX {env['jax_version']}, {env['date']}",
                     any(r.get("tiny") for r in rows)),
        "",
        "| model | method | step ms (median) | speed-up vs bf16 | weight bytes vs bf16 (whole model) | block linears vs bf16 | rel. L2 vs bf16 out | peak GPU mem GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | error: {r['error'][:80]} | | | | | |")
            continue
        pm = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r.get("peak_memory_bytes") else "n/a"
        rel = "" if r["rel_l2_vs_bf16_output"] is None else f"{r['rel_l2_vs_bf16_output']:.4f}"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['median_ms']:.2f} | {r['speedup_vs_bf16']:.2f}× | "
            f"{r['weight_bytes_ratio_vs_bf16']:.3f} | {r['block_linear_bytes_ratio_vs_bf16']:.3f} | {rel} | {pm} |"
        )
    prof = [r for r in rows if r.get("profile")]
    if prof:
        cats = list(dict.fromkeys(c for r in prof for c in r["profile"]["categories_ms"]))
        lines += ["", "GPU kernel time per step by kernel kind (ms; `--profile`, a `jax.profiler` trace of the same "
                  "compiled step, grouped by `benchmarks.xl_step.summarize`):", "",
                  "| model | method | GPU busy | " + " | ".join(cats) + " |", "|---|---|---|" + "---|" * len(cats)]
        for r in prof:
            c = r["profile"]["categories_ms"]
            lines.append(f"| {r['model']} | {r['method']} | {r['profile']['gpu_busy_ms']:.1f} | "
                         + " | ".join(f"{c.get(k, 0.0):.1f}" for k in cats) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="pixart,stdit")
    ap.add_argument("--variants", default="bf16,w8a8,w4a8")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", help="result JSON (default benchmarks/results/e2e.json, e2e_tiny.json with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run of the same code)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also record the GPU kernel-time breakdown of STEPS profiled steps per row")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if variants[0] != "bf16":
        variants = ["bf16"] + [v for v in variants if v != "bf16"]
    rows: list[dict] = []
    for m in args.models.split(","):
        try:
            rows += run(m, variants, args.iters, args.tiny, args.profile)
        except Exception as e:  # noqa: BLE001 - record (e.g. OOM) and go on
            rows.append({"model": m, "method": "?", "tiny": args.tiny, "error": f"{type(e).__name__}: {str(e)[:400]}",
                         **environment()})
            print(rows[-1], flush=True)
        out = results_path(REPO / "benchmarks" / "results" / "e2e.json", args.out, args.tiny)  # written after each model: a time limit keeps what was measured
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        write_md(rows, out.with_suffix(".md"))
    print((out.with_suffix(".md")).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


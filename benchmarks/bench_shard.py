"""Sharded denoising steps on N devices (:mod:`vidq_jax.sharding`): step latency, scaling efficiency
against one device of the same machine, memory per device, and sharded-vs-single equality.

Cases (CFG batch 2 = [cond; uncond], release configs, random bf16 weights drawn on the device):

* ``pixart-1024`` — PixArt-XL/2 at 1024 px (latent 128×128, 4096 tokens); ``pixart-2048`` — 2048 px
  (latent 256×256, 16384 tokens);
* ``stdit-16x512`` — STDiT-XL/2, 16 frames × 512² (latent 16×64×64, 16 × 1024 tokens);
* ``stdit3-720p`` — STDiT3-XL/2, 51 frames at 720×1280 (latent 15×90×160, 15 × 3600 tokens).

Variants: ``bf16`` and ``w8a8`` (:data:`benchmarks.xl_step.VARIANTS`: symmetric per-channel int8 weights,
dynamic per-token int8 activations, Pallas kernels per shard). Meshes (``--meshes``, default for N
devices, :func:`default_meshes`): pure data parallel over the CFG pair (``data=2,seq=1``), mixed
``data=2,seq=N/2`` and pure sequence parallel ``data=1,seq=N``, plus frame-aligned ones for STDiT3's
15 latent frames (``data=2,seq=3``, ``data=1,seq=5`` on 8 devices), each sequence-parallel mesh with
Ulysses and ring attention (``--strategies``). A step = the sharded model call + the guidance combine, what a sampler runs once
per step (:func:`vidq_jax.sharding.sharded_apply_fn`, the function ``pipeline.sample(..., mesh=)``
uses). Per row: median step time, speed-up and scaling efficiency ``t_1 / (devices · t_N)`` against
the same step on one device, memory per device of the compiled step (arguments + temporaries +
outputs, ``memory_analysis``) and the process peak, and the sharded output's error against the
single-device output (bf16: informational).

``--check`` (= ``--variants fp32``): the equality check of the CPU tests on the devices — float32 at
the highest matmul precision, the case's real token count, the XL width with ``--check-depth`` blocks
(default 2), sharded vs single device, max |Δ| / max |ref| <= 1e-5 per mesh (its rows: ``passed``).

    python -m benchmarks.bench_shard                              # all cases, variants, meshes (GPU)
    python -m benchmarks.bench_shard --cases pixart-1024 --variants bf16 --meshes "data=1,seq=4"
    python -m benchmarks.bench_shard --check                      # equality check only
    python -m benchmarks.bench_shard --tiny                       # CPU smoke run, 8 simulated devices

Rows are merged into ``benchmarks/results/shard.json`` (+ ``shard.md``) by (case, variant, mesh,
strategy, device count), written after every row, so runs split by ``--cases`` / ``--variants`` add up
and a time limit keeps what was measured.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--tiny" in sys.argv and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # the CPU smoke run simulates 8 devices; must be set before JAX starts its backends
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import REPO, environment, mark_toy, median_time, results_path, title  # noqa: E402
from benchmarks.xl_step import random_params  # noqa: E402
from models.pixart import PIXART_PRESETS, PixArt  # noqa: E402
from models.stdit import STDIT_PRESETS, STDiT  # noqa: E402
from models.stdit3 import STDIT3_PRESETS, STDiT3  # noqa: E402
from vidq_jax import pipeline, sharding  # noqa: E402

CHECK_RTOL = 1e-5  # the CPU tests' tolerance (tests/sharding/test_shard_sampling.py)
FLOAT_VARIANTS = ("bf16", "fp32")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    title: str
    cls: type
    config: Any
    latent: tuple[int, ...]  # without batch, channels last
    pixels: tuple[int, int] | None = None  # STDiT3's height/width conditions


def cases(tiny: bool) -> dict[str, Case]:
    pix = PIXART_PRESETS["pixart-alpha-1024-ms"]
    s1 = STDIT_PRESETS["stdit-xl-2-16x512x512"]
    s3 = STDIT3_PRESETS["stdit3-xl-2"]
    if tiny:  # toy sizes, same code path: 4 heads, uneven token counts where the real ones are
        small = dict(hidden_size=96, depth=2, num_heads=4, caption_channels=32, model_max_length=8)
        pix, s3 = (dataclasses.replace(c, **small) for c in (pix, s3))
        s1 = dataclasses.replace(s1, input_size=(4, 8, 8), **small)
        return {c.name: c for c in (
            Case("pixart-1024", "PixArt-XL/2 [toy size]", PixArt, pix, (8, 8, 4)),
            Case("pixart-2048", "PixArt-XL/2 [toy size, uneven]", PixArt, pix, (10, 6, 4)),
            Case("stdit-16x512", "STDiT-XL/2 [toy size]", STDiT, s1, (4, 8, 8, 4)),
            Case("stdit3-720p", "STDiT3-XL/2 [toy size, 3 frames]", STDiT3, s3, (3, 8, 8, 4), (64, 64)),
        )}
    return {c.name: c for c in (
        Case("pixart-1024", "PixArt-XL/2 1024 px (latent 128x128)", PixArt, pix, (128, 128, 4)),
        Case("pixart-2048", "PixArt-XL/2 2048 px (latent 256x256)", PixArt, pix, (256, 256, 4)),
        Case("stdit-16x512", "STDiT-XL/2 16x512x512 (latent 16x64x64)", STDiT, s1, (16, 64, 64, 4)),
        Case("stdit3-720p", "STDiT3-XL/2 51x720x1280 (latent 15x90x160)", STDiT3, s3, (15, 90, 160, 4), (720, 1280)),
    )}


def make_inputs(case: Case, model, dtype) -> dict[str, Any]:
    """CFG-batch-2 inputs of one step (random latent and captions; a third of the caption valid)."""
    cfg = model.config
    rng = np.random.default_rng(0)
    length = cfg.model_max_length
    inputs = {
        "x": rng.standard_normal((2, *case.latent)).astype(np.float32),
        "timestep": np.full((2,), 500.0, np.float32),
        "y": rng.standard_normal((2, length, cfg.caption_channels)).astype(np.float32),
        "mask": np.broadcast_to(np.arange(length) < max(1, length // 3), (2, length)).astype(np.int32),
    }
    if getattr(cfg, "micro_condition", False):
        side = case.latent[0] * 8.0
        inputs["img_hw"] = np.full((2, 2), side, np.float32)
        inputs["aspect_ratio"] = np.ones((2, 1), np.float32)
    if case.pixels is not None:
        inputs.update(fps=np.full((2,), 24.0, np.float32), height=np.full((2,), float(case.pixels[0]), np.float32),
                      width=np.full((2,), float(case.pixels[1]), np.float32))
    return {k: jnp.asarray(v, dtype) if k in ("x", "y") else jnp.asarray(v) for k, v in inputs.items()}


def build(case: Case, dtype, depth: int | None = None, tiny: bool = False):
    """``(model, params, inputs)``, params random N(0, 0.02): drawn on the device (``rbg`` keys, compiled once per
    distinct leaf shape: ``benchmarks.xl_step.random_params``), with numpy for the toy sizes."""
    config = case.config if depth is None else dataclasses.replace(case.config, depth=depth)
    model = case.cls(config, dtype=dtype, param_dtype=dtype)
    inputs = make_inputs(case, model, dtype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))["params"]
    if not tiny:
        return model, random_params(shapes, jax.random.key(2, impl="rbg"), dtype), inputs
    rng = np.random.default_rng(0)
    return model, jax.tree_util.tree_map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), dtype), shapes), inputs


def quantized(model, params, inputs, variant: str):
    if variant in FLOAT_VARIANTS:
        return params
    from benchmarks.bench_e2e import variant_config
    from vidq_jax.quant import quantize_params

    return quantize_params(params, [inputs], model=model, config=variant_config(variant))


def step_fn(apply_fn):
    """One jitted CFG step of ``apply_fn``: the model on [cond; uncond] and the guidance combine."""

    def step(params, inputs, guidance):
        rest = {k: v for k, v in inputs.items() if k not in ("x", "timestep")}
        out = apply_fn(params, inputs["x"], inputs["timestep"], **rest)
        c = inputs["x"].shape[-1]
        eps_c, eps_u = jnp.split(out[..., :c].astype(jnp.float32), 2, axis=0)
        return eps_u + guidance * (eps_c - eps_u)

    return jax.jit(step)


def default_meshes(n: int, case: Case | None = None) -> list[str]:
    """Pure data parallel over the CFG pair, mixed ``data=2,seq=N/2``, pure sequence parallel; for a video
    whose latent frames do not divide over those ``seq`` sizes also the largest frame-aligned ones (STDiT3's
    per-head qk-norm and RoPE run on the frame-grouped view: frames split across devices cost gathers)."""
    out = []
    if n >= 2:
        out.append("data=2,seq=1")
    if n >= 4:
        out.append(f"data=2,seq={n // 2}")
    if n >= 2:
        out.append(f"data=1,seq={n}")
    if case is not None and len(case.latent) == 4:
        frames = case.latent[0] // case.config.patch_size[0]
        for data, most in ((2, n // 2), (1, n)):
            fit = [d for d in range(2, most + 1) if frames % d == 0]
            if fit and f"data={data},seq={fit[-1]}" not in out and most not in fit:
                out.append(f"data={data},seq={fit[-1]}")
    return out


def memory_per_device(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def process_peak(devices) -> int | None:
    peaks = []
    for d in devices:
        try:
            peaks.append((d.memory_stats() or {}).get("peak_bytes_in_use"))
        except Exception:  # noqa: BLE001 - CPU devices have no memory stats
            return None
    return max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None


def errors(out, ref) -> dict[str, float]:
    out, ref = np.asarray(sharding.to_host(out), np.float32), np.asarray(ref, np.float32)
    return {"max_rel_err": float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)),
            "rel_l2_err": float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))}


def run_one(model, params, inputs, mesh_text: str | None, strategy: str, iters: int, tiny: bool) -> tuple[dict, Any]:
    """Time one step on ``mesh_text`` (``None``: one device); ``(row fields, output)``."""
    base = pipeline.apply_fn_for(model)
    if mesh_text is None:
        dev = jax.devices()[0]
        p, i, fn, devices = jax.device_put(params, dev), jax.device_put(inputs, dev), base, [dev]
    else:
        mesh = sharding.as_mesh(mesh_text)
        fn = sharding.sharded_apply_fn(model, base, mesh, strategy=strategy)
        p, i, devices = sharding.place_params(params, mesh), sharding.place(inputs, mesh, 2), list(mesh.devices.flat)
    step = step_fn(fn)
    t0 = time.perf_counter()
    compiled = step.lower(p, i, 4.5).compile()
    compile_s = time.perf_counter() - t0
    out = compiled(p, i, 4.5)
    jax.block_until_ready(out)
    t = median_time(compiled, [(p, i, 4.5)], iters=iters, reps=3 if tiny else 5, warmup=1)
    return {"devices": len(devices), "compile_s": round(compile_s, 2), **{k: round(v, 3) for k, v in t.items()},
            "memory_per_device_bytes": memory_per_device(compiled), "process_peak_bytes": process_peak(devices)}, out


def bench_case(case: Case, variants: list[str], meshes: list[str], strategies: list[str], iters: int, tiny: bool,
               check_depth: int, record) -> None:
    built: dict[tuple, tuple] = {}
    for variant in variants:
        check = variant == "fp32"  # the equality check: float32, highest matmul precision
        dtype = jnp.float32 if check or tiny else jnp.bfloat16
        depth = None if tiny or not check else check_depth
        if (dtype, depth) not in built:
            print(f"[{case.name}] building {case.title} ({jnp.dtype(dtype).name}, depth {depth or 'release'}) ...",
                  flush=True)
            built.clear()  # one XL model in memory at a time
            built[(dtype, depth)] = build(case, dtype, depth, tiny)
        model, params, inputs = built[(dtype, depth)]
        with jax.default_matmul_precision("highest" if check else None):
            _bench_variant(case, model, quantized(model, params, inputs, variant), inputs, variant, meshes, strategies,
                           iters, tiny, record)


def _bench_variant(case, model, params, inputs, variant, meshes, strategies, iters, tiny, record) -> None:
    key = dict(case=case.name, model=case.title, variant=variant, depth=model.config.depth)
    single, ref = run_one(model, params, inputs, None, "-", iters, tiny)
    record({**key, "mesh": "1 device", "strategy": "-", **single, "speedup": 1.0, "scaling_efficiency": 1.0})
    for m in meshes:
        seq = sharding.parse_mesh(m).get("seq", 1)
        for strategy in strategies if seq > 1 else ["-"]:
            row = {**key, "mesh": m, "strategy": strategy}
            try:
                got, out = run_one(model, params, inputs, m, "ulysses" if strategy == "-" else strategy, iters, tiny)
            except sharding.MeshError as e:  # e.g. Ulysses with heads that do not divide over seq
                record({**row, "skipped": str(e)})
                continue
            except Exception as e:  # noqa: BLE001 - record (e.g. OOM) and go on
                record({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            sp = single["median_ms"] / got["median_ms"]
            err = errors(out, ref)
            record({**row, **got, "speedup": round(sp, 3), "scaling_efficiency": round(sp / got["devices"], 3),
                    **{k: float(f"{v:.3g}") for k, v in err.items()},
                    **({"passed": err["max_rel_err"] <= CHECK_RTOL} if variant == "fp32" else {})})


def key_of(r: dict) -> tuple:
    return (r.get("case"), r.get("variant"), r.get("mesh"), r.get("strategy"), r.get("gpu"), r.get("devices_total"),
            r.get("tiny"))


def write_md(rows: list[dict], path: Path) -> None:
    env = rows[-1]  # the latest row's machine (rows of other runs are kept)
    tiny = any(r.get("tiny") for r in rows)
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
    lines = ["# " + title(f"Sharded denoising step (CFG batch 2) on {env['devices_total']} × {env['gpu']}, "
                          f"JAX {env['jax_version']}, {env['date']}", tiny), "",
             "Speed-up and scaling efficiency against one device of the same machine; memory per device = the "
             "compiled step's arguments + temporaries + outputs; error = the sharded output against the "
             "single-device output (max |Δ| / max |ref|).", "",
             "| model | variant | mesh | attention | step ms | speed-up | efficiency | mem/device GiB | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("variant") == "fp32":
            continue
        head = f"| {r['model']} | {r['variant']} | {r['mesh']} | {r['strategy']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} | | | | |")
            continue
        err = "" if "max_rel_err" not in r else f"{r['max_rel_err']:.1e}"
        lines.append(f"{head} {r['median_ms']:.2f} | {r['speedup']:.2f}× | {r['scaling_efficiency']:.2f} | "
                     f"{gib(r['memory_per_device_bytes'])} | {err} |")
    checks = [r for r in rows if r.get("variant") == "fp32" and r["mesh"] != "1 device"]
    if checks:
        lines += ["", f"Equality check (float32, highest precision, max |Δ| / max |ref| <= {CHECK_RTOL:g}):", "",
                  "| model | blocks | mesh | attention | max rel. error | rel. L2 | passed |", "|---|---|---|---|---|---|---|"]
        for r in checks:
            if "skipped" in r or "error" in r:
                lines.append(f"| {r['model']} | {r['depth']} | {r['mesh']} | {r['strategy']} | "
                             f"{r.get('skipped') or r.get('error')} | | |")
            else:
                lines.append(f"| {r['model']} | {r['depth']} | {r['mesh']} | {r['strategy']} | {r['max_rel_err']:.1e} | "
                             f"{r['rel_l2_err']:.1e} | {'yes' if r['passed'] else 'NO'} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="pixart-1024,pixart-2048,stdit-16x512,stdit3-720p")
    ap.add_argument("--variants", default="bf16,w8a8")
    ap.add_argument("--meshes", help="space-separated meshes, e.g. 'data=2,seq=2 data=1,seq=4' (default: for all devices)")
    ap.add_argument("--strategies", default="ulysses,ring")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--check", action="store_true", help="only the float32 equality check (= --variants fp32)")
    ap.add_argument("--check-depth", type=int, default=2, help="transformer blocks of the check models (default 2)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on 8 simulated CPU devices (smoke run)")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/shard.json, shard_tiny.json with --tiny)")
    args = ap.parse_args(argv)
    n = jax.device_count()
    all_cases = cases(args.tiny)
    names = args.cases.split(",")
    unknown = [c for c in names if c not in all_cases]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {sorted(all_cases)}")
    meshes = args.meshes.split() if args.meshes else None
    strategies = args.strategies.split(",")
    out = results_path(REPO / "benchmarks" / "results" / "shard.json", args.out, args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.is_file() else []
    env = {**environment(), "devices_total": n}

    def record(row: dict) -> None:
        row = mark_toy([{**row, **env}], args.tiny)[0]
        rows[:] = [r for r in rows if key_of(r) != key_of(row)] + [row]
        print(json.dumps(row), flush=True)
        if sharding.is_writer():
            out.write_text(json.dumps(rows, indent=1))
            write_md(rows, out.with_suffix(".md"))

    print(f"{n} device(s): {jax.devices()[0].device_kind}; meshes {meshes or 'per case'}", flush=True)
    variants = ["fp32"] if args.check else args.variants.split(",")
    for name in names:
        case = all_cases[name]
        bench_case(case, variants, meshes or default_meshes(n, case), strategies, args.iters, args.tiny,
                   args.check_depth, record)
    if rows and sharding.is_writer():
        print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""bf16 forward latency of the video DiTs: the float baseline for the quantized numbers.

Cases (CFG batch 2, i.e. cond + uncond rows in one call, as the samplers run them):

* ``stdit-16x512x512``  — Open-Sora 1.0 STDiT-XL/2, 16 frames × 512² (latent 16×64×64, 16384 tokens/row);
* ``stdit3-51x720p``    — Open-Sora 1.2 STDiT3-XL/2, 51 frames × 720×1280 (latent 15×90×160,
  54000 tokens/row; fps 24, height 720, width 1280).

Params are random (``jax.jit(model.init)`` directly on the device, ``param_dtype=bfloat16``: no host
transfer), compute dtype bf16. Each case is compiled once, warmed up, then timed ``--iters`` times
(host clock around a ``block_until_ready`` call, inputs random, not zeros); the median is reported
together with min/max and the achieved rate of the analytic model FLOPs (:func:`model_flops`). Prints a table; writes ``benchmarks/results/bf16_video.json`` (or ``--out``).

    python -m benchmarks.bench_bf16_video                 # GPU, full size
    python -m benchmarks.bench_bf16_video --tiny          # CPU smoke run of the same code path
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.common import REPO, device_name, mark_toy, results_path, title
from models.stdit import STDIT_PRESETS, STDiT
from models.stdit3 import STDIT3_PRESETS, STDiT3


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    arch: str  # "stdit" | "stdit3"
    config: object
    latent: tuple[int, int, int]  # (T, H, W) latent
    pixels: tuple[int, int]  # (height, width) in pixels (STDiT3 conditions)
    batch: int = 2


def cases(tiny: bool) -> list[Case]:
    s1 = STDIT_PRESETS["stdit-xl-2-16x512x512"]
    s3 = STDIT3_PRESETS["stdit3-xl-2"]
    if tiny:
        small = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32)
        s1 = dataclasses.replace(s1, input_size=(4, 8, 8), model_max_length=8, **small)
        s3 = dataclasses.replace(s3, model_max_length=8, **small)
        return [
            Case("stdit-tiny", "stdit", s1, (4, 8, 8), (64, 64)),
            Case("stdit3-tiny", "stdit3", s3, (3, 10, 14), (80, 112)),
        ]
    return [
        Case("stdit-16x512x512", "stdit", s1, (16, 64, 64), (512, 512)),
        Case("stdit3-51x720p", "stdit3", s3, (15, 90, 160), (720, 1280)),
    ]


def make_inputs(case: Case, key) -> dict:
    cfg = case.config
    b = case.batch
    length = cfg.model_max_length
    kx, ky = jax.random.split(key)
    valid = max(1, length // 3)
    inputs = dict(
        x=jax.random.normal(kx, (b, *case.latent, cfg.in_channels), jnp.float32),
        timestep=jnp.full((b,), 500.0, jnp.float32),
        y=jax.random.normal(ky, (b, length, cfg.caption_channels), jnp.float32),
        mask=jnp.broadcast_to((jnp.arange(length) < valid).astype(jnp.int32), (b // 2 or 1, length)),
    )
    if case.arch == "stdit3":
        inputs.update(
            fps=jnp.full((b,), 24.0, jnp.float32),
            height=jnp.full((b,), float(case.pixels[0]), jnp.float32),
            width=jnp.full((b,), float(case.pixels[1]), jnp.float32),
        )
    return inputs


def model_flops(case: Case) -> float:
    """Analytic FLOPs (2 per multiply-add) of one forward: every Dense and attention matmul; the
    attention runs over all ``L`` caption slots (masked, not packed). Embedders/norms are ignored."""
    cfg = case.config
    c, depth, length = cfg.hidden_size, cfg.depth, cfg.model_max_length
    pt, ph, pw = cfg.patch_size
    t, h, w = (-(-a // p) for a, p in zip(case.latent, cfg.patch_size))
    s, n = h * w, t * h * w
    hidden = int(c * cfg.mlp_ratio)
    # one self-attention (+ its qkv/proj) over sequences of `seq` tokens, `groups` of them
    self_attn = lambda groups, seq: groups * (4 * seq * c * c + 2 * seq * seq * c)  # noqa: E731
    cross = n * 2 * c * c + length * 2 * c * c + 2 * n * length * c  # q, proj; kv; QK^T, PV
    mlp = n * 2 * c * hidden
    if case.arch == "stdit":
        block = self_attn(t, s) + self_attn(s, t) + cross + mlp
    else:  # a spatial and a temporal PixArt block per depth index
        block = self_attn(t, s) + self_attn(s, t) + 2 * (cross + mlp)
    final = n * c * pt * ph * pw * cfg.out_channels
    return 2.0 * case.batch * (depth * block + final)


def run_case(case: Case, iters: int, warmup: int) -> dict:
    cls = STDiT if case.arch == "stdit" else STDiT3
    model = cls(case.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    key = jax.random.PRNGKey(0)
    inputs = make_inputs(case, jax.random.PRNGKey(1))

    # STDiT3's parameter shapes do not depend on the input size: initialise on small inputs
    init_inputs = inputs if case.arch == "stdit" else model.init_inputs(batch=1)
    t0 = time.perf_counter()
    params = jax.jit(model.init)(key, **init_inputs)["params"]
    jax.block_until_ready(params)
    t_init = time.perf_counter() - t0
    n_params = sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))

    fwd = jax.jit(lambda p, kw: model.apply({"params": p}, **kw))
    t0 = time.perf_counter()
    compiled = fwd.lower(params, inputs).compile()
    t_compile = time.perf_counter() - t0
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:  # noqa: BLE001 - cost analysis is optional information
        pass

    out = None
    for _ in range(warmup):
        out = compiled(params, inputs)
    jax.block_until_ready(out)
    ok = bool(jnp.isfinite(out).all())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, inputs))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    t, h, w = case.latent
    pt, ph, pw = case.config.patch_size
    tokens = -(-t // pt) * -(-h // ph) * -(-w // pw)
    return dict(
        case=case.name,
        arch=case.arch,
        config=dataclasses.asdict(case.config),
        batch=case.batch,
        latent_thw=list(case.latent),
        pixels_hw=list(case.pixels),
        tokens_per_row=tokens,
        params=n_params,
        init_s=round(t_init, 3),
        compile_s=round(t_compile, 3),
        iters=iters,
        warmup=warmup,
        median_ms=round(med * 1e3, 3),
        min_ms=round(min(times) * 1e3, 3),
        max_ms=round(max(times) * 1e3, 3),
        times_ms=[round(x * 1e3, 3) for x in times],
        model_flops=model_flops(case),
        model_tflops_per_s=round(model_flops(case) / med / 1e12, 1),
        xla_cost_analysis_flops=flops,  # excludes cuBLAS custom calls: not the model's FLOPs
        output_finite=ok,
        output_shape=list(out.shape),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    ap.add_argument("--only", choices=["stdit", "stdit3"], help="run one architecture")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", help="result JSON (default benchmarks/results/bf16_video.json, bf16_video_tiny.json "
                    "with --tiny)")
    args = ap.parse_args(argv)

    results = []
    for case in cases(args.tiny):
        if args.only and case.arch != args.only:
            continue
        print(f"[{case.name}] running ...", flush=True)
        try:
            r = run_case(case, args.iters, args.warmup)
        except Exception as e:  # noqa: BLE001 - record e.g. OOM and go on with the next case
            r = dict(case=case.name, arch=case.arch, error=f"{type(e).__name__}: {str(e)[:500]}")
        print(json.dumps({k: v for k, v in r.items() if k not in ("config", "times_ms")}), flush=True)
        results.append(r)
    mark_toy(results, args.tiny)

    report = dict(
        benchmark=title("bf16 forward latency, random weights, CFG batch 2", args.tiny),
        device=device_name(),
        platform=jax.default_backend(),
        jax_version=jax.__version__,
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        timing="host clock around block_until_ready per call, after warm-up; median of iters",
        tiny=args.tiny,
        results=results,
    )
    out = results_path(REPO / "benchmarks" / "results" / "bf16_video.json", args.out, args.tiny)
    os.makedirs(out.parent, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"\n{report['benchmark']}\n{report['device']}  jax {report['jax_version']}  {report['date']}")
    print(f"{'case':<20} {'tokens/row':>10} {'params':>8} {'compile s':>9} {'median ms':>10} {'min':>9} {'max':>9} {'TFLOP/s':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<20} ERROR {r['error'][:100]}")
            continue
        print(
            f"{r['case']:<20} {r['tokens_per_row']:>10} {r['params'] / 1e6:>7.0f}M {r['compile_s']:>9.1f} "
            f"{r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['max_ms']:>9.2f} {r['model_tflops_per_s']:>8}"
        )
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

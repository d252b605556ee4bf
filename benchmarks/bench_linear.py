"""Benchmark the quantized linears against XLA bf16 on the GPU.

Usage (GPU machine, repo root)::

    python -m benchmarks.bench_linear --json benchmarks/results/linear.json \
        --md benchmarks/results/linear.md
    python -m benchmarks.bench_linear --sweep   # tile sweep of the Mosaic GPU kernels
    python -m benchmarks.bench_linear --only pallas_fp8 xla_fp8 pallas_w8a8 --ms 8192   # some rows
    python -m benchmarks.bench_linear --group-sweep --ms 8192   # tile sweep of Q-DiT's group GEMM

Rows (``method``): ``xla_bf16`` (the baseline: XLA's bf16 GEMM + bias), the int8 W8A8 / W4A8 linears
(``pallas_*`` = Mosaic GPU on Hopper, ``*_triton``, ``xla_*``), ViDiT-Q's real layer formats
(``*_zp``: asymmetric weights, zero point in the epilogue; ``*_rot``: online Hadamard rotation in the
quantizer; ``*_tqe``: Q-VDiT's rank-1 branch, ``u`` from the quantizer and ``u ⊗ β`` in the epilogue), the DiT block's gated residual in the epilogue (``*_res_gate`` vs ``xla_bf16_res_gate``),
and FP8 e4m3 W8A8 (``pallas_fp8`` Mosaic GPU wgmma, ``xla_fp8`` = XLA's own FP8
dot with the XLA quantizer: the FP8 baseline; ``*_fp8_gemm``: from pre-quantized e4m3 activations),
Q-DiT's per-token-per-group layers (``qdit_w4a8_*`` / ``qdit_w6a8_*``: :func:`qdit_methods`; its two parts
``qdit_quantize_xla`` and ``qdit_w4a8_gemm``).

Timing: each method is jitted, warmed up, then called ``iters`` times back-to-back on a rotation
of input sets (so activations are not served from L2 every call) ending with
``block_until_ready``; the per-call time is the median over ``reps`` such repetitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from benchmarks.common import median_time
from pallas_kernels import _config
from pallas_kernels._compat import gpu_name
from pallas_kernels.ops.int8_matmul import CONFIG_FILE, mosaic
from pallas_kernels.ops.int8_matmul.reference import int8_matmul_ref, scaled_epilogue_ref
from pallas_kernels.ops.producer import layernorm_noaffine
from pallas_kernels.ops.quantize import quantize_per_token

MS = (8192, 32768)
KNS = ((1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152))
N_INPUT_SETS = 3


def bench(fn: Callable, arg_sets: list[tuple], iters: int = 30, reps: int = 5) -> float:
    """Median per-call wall time in microseconds (``common.median_time`` of the jitted ``fn``)."""
    return median_time(jax.jit(fn), arg_sets, iters=iters, reps=reps, warmup=1)["median_ms"] * 1e3


def make_inputs(m: int, k: int, n: int, seed: int = 0) -> dict[str, Any]:
    keys = jax.random.split(jax.random.key(seed), 8)
    xs = [jax.random.normal(keys[i], (m, k), jnp.float32).astype(jnp.bfloat16)
          for i in range(N_INPUT_SETS)]
    w_f = jax.random.normal(keys[4], (n, k), jnp.float32) * 0.02
    w_scale = jnp.max(jnp.abs(w_f), axis=1) / 127.0
    wq = jnp.clip(jnp.round(w_f / w_scale[:, None]), -127, 127).astype(jnp.int8)
    w4_scale = jnp.max(jnp.abs(w_f), axis=1) / 7.0
    w4 = jnp.clip(jnp.round(w_f / w4_scale[:, None]), -8, 7).astype(jnp.int8)
    bias = jax.random.normal(keys[5], (n,), jnp.float32) * 0.1
    xq = [quantize_per_token(x) for x in xs]
    # asymmetric min-max weights (ViDiT-Q's): w ≈ (q + z) · s
    lo, hi = jnp.minimum(w_f.min(1), 0.0), jnp.maximum(w_f.max(1), 0.0)
    wa_scale = (hi - lo) / 255.0
    w_zero = (jnp.round(lo / wa_scale) + 128).astype(jnp.int32)
    wq_asym = jnp.clip(jnp.round(w_f / wa_scale[:, None]) - w_zero[:, None], -128, 127).astype(jnp.int8)
    w_fp8, w_fp8_scale = pk.quantize_fp8_weight_ref(w_f)
    return dict(
        xs=xs, w_bf16=w_f.T.astype(jnp.bfloat16), b_bf16=bias.astype(jnp.bfloat16), wq=wq,
        w_scale=w_scale, bias=bias, w4p=pk.pack_int4(w4), w4_scale=w4_scale, xq=xq,
        wq_asym=wq_asym, wa_scale=wa_scale, w_zero=w_zero, w_fp8=w_fp8, w_fp8_scale=w_fp8_scale,
        xq8=[pk.quantize_per_token(x, dtype=pk.FP8) for x in xs],
        residual=jax.random.normal(keys[6], (m, n), jnp.float32).astype(jnp.bfloat16),
        gate=(jax.random.normal(keys[7], (2, n), jnp.float32) * 0.1).astype(jnp.bfloat16),
    )


def rotation(k: int) -> tuple:
    """ViDiT-Q's online rotation of a K-wide input: (base Hadamard, random signs)."""
    from vidq_jax.quant.hadamard import base_hadamard, hadamard_factors, random_signs

    return base_hadamard(hadamard_factors(k)[0]), random_signs(jax.random.key(k), k)


def methods(inp: dict[str, Any]) -> dict[str, tuple[Callable, list[tuple]]]:
    wq, ws, b = inp["wq"], inp["w_scale"], inp["bias"]
    xs = [(x,) for x in inp["xs"]]
    xqs = [(q, s) for q, s in inp["xq"]]
    w_bf16, b_bf16 = inp["w_bf16"], inp["b_bf16"]
    w4p, w4s = inp["w4p"], inp["w4_scale"]
    k = inp["xs"][0].shape[1]
    shift = jnp.full((2, 1, k), 0.1, jnp.float32)
    scale = jnp.full((2, 1, k), -0.05, jnp.float32)
    smooth = jnp.linspace(0.5, 2.0, k, dtype=jnp.float32)

    def ln_mod_bf16(x):  # the bf16 model's producer of the same activation (no quantization)
        y = layernorm_noaffine(x.reshape(2, -1, k)) * (1 + scale) + shift
        return y.astype(jnp.bfloat16)

    wqa, was, zw = inp["wq_asym"], inp["wa_scale"], inp["w_zero"]
    w8, w8s = inp["w_fp8"], inp["w_fp8_scale"]
    xq8s = [(q, s) for q, s in inp["xq8"]]
    res, gate = inp["residual"], inp["gate"]
    rot = rotation(k)
    tqe = (jax.random.normal(jax.random.key(k), (k,), jnp.float32) / math.sqrt(k),
           jax.random.normal(jax.random.key(k + 1), (wq.shape[0],), jnp.float32))

    def bf16_res_gate(x):  # the bf16 block: x + gate * proj(h), XLA fuses the add into the GEMM's consumer
        y = jnp.dot(x, w_bf16) + b_bf16
        return (res.reshape(2, -1, y.shape[-1]) + gate[:, None] * y.reshape(2, -1, y.shape[-1])).reshape(y.shape)

    return {
        "xla_bf16": (lambda x: jnp.dot(x, w_bf16) + b_bf16, xs),
        "xla_bf16_res_gate": (bf16_res_gate, xs),
        # ViDiT-Q's layer formats: asymmetric weights (zero point in the epilogue), online rotation
        "pallas_w8a8_zp": (lambda x: pk.w8a8_linear(x, wqa, was, b, backend="mosaic", w_zero_point=zw), xs),
        # + Q-VDiT's rank-1 TQE branch: u by the quantizer kernel, u ⊗ beta in the epilogue (vs pallas_w8a8_zp)
        "pallas_w8a8_zp_tqe": (lambda x: pk.w8a8_linear(x, wqa, was, b, backend="mosaic", w_zero_point=zw,
                                                        rank1=tqe), xs),
        "pallas_w8a8_rot": (lambda x: pk.w8a8_linear(x, wq, ws, b, backend="mosaic", rotation=rot), xs),
        "pallas_w8a8_rot_zp": (lambda x: pk.w8a8_linear(x, wqa, was, b, backend="mosaic", rotation=rot,
                                                        w_zero_point=zw), xs),
        "pallas_w8a8_res_gate": (lambda x: pk.w8a8_linear(x, wq, ws, b, backend="mosaic", residual=res,
                                                          gate=gate), xs),
        # FP8 e4m3 W8A8: Pallas Mosaic GPU wgmma vs XLA's own FP8 dot (Pallas-Triton FP8 is inaccurate on
        # a GPU and refused there: pallas_kernels.int8_matmul)
        "pallas_fp8": (lambda x: pk.fp8_linear(x, w8, w8s, b, backend="mosaic"), xs),
        "xla_fp8": (lambda x: pk.fp8_linear(x, w8, w8s, b, backend="xla"), xs),
        "pallas_fp8_rot": (lambda x: pk.fp8_linear(x, w8, w8s, b, backend="mosaic", rotation=rot), xs),
        "pallas_fp8_gemm": (lambda q, s: pk.fp8_gemm(q, w8, s, w8s, b, out_dtype=jnp.bfloat16, backend="mosaic"),
                            xq8s),
        "xla_fp8_gemm": (lambda q, s: pk.fp8_gemm(q, w8, s, w8s, b, out_dtype=jnp.bfloat16, backend="xla"), xq8s),
        "xla_bf16_nobias": (lambda x: jnp.dot(x, w_bf16), xs),
        "xla_w8a8": (lambda x: pk.w8a8_linear(x, wq, ws, b, backend="xla"), xs),
        "pallas_w8a8": (lambda x: pk.w8a8_linear(x, wq, ws, b, backend="mosaic"), xs),
        "pallas_w8a8_triton": (lambda x: pk.w8a8_linear(x, wq, ws, b, backend="triton"), xs),
        "pallas_w4a8": (lambda x: pk.w4a8_linear(x, w4p, w4s, b, backend="mosaic"), xs),
        "pallas_w4a8_triton": (lambda x: pk.w4a8_linear(x, w4p, w4s, b, backend="triton"), xs),
        "xla_w4a8": (lambda x: pk.w4a8_linear(x, w4p, w4s, b, backend="xla"), xs),
        # int8 GEMM + dequant epilogue on pre-quantized activations (quantization fused upstream).
        "pallas_gemm_epilogue": (
            lambda q, s: pk.int8_gemm(q, wq, s, ws, b, out_dtype=jnp.bfloat16, backend="mosaic"),
            xqs),
        "xla_gemm_epilogue": (
            lambda q, s: scaled_epilogue_ref(int8_matmul_ref(q, wq), s, ws, b, jnp.bfloat16), xqs),
        "quantize_xla": (lambda x: quantize_per_token(x, backend="xla"), xs),
        "quantize_pallas": (lambda x: quantize_per_token(x, backend="triton"), xs),
        "pallas_int8_gemm": (lambda q, s: pk.int8_matmul(q, wq, backend="mosaic"), xqs),
        # Producer of a quantized linear's input vs the bf16 model's LN + modulate pass.
        "ln_modulate_bf16": (ln_mod_bf16, xs),
        "producer_xla": (lambda x: pk.fused_quantize_producer(
            x.reshape(2, -1, k), shift, scale, smooth, backend="xla"), xs),
        "producer_pallas": (lambda x: pk.fused_quantize_producer(
            x.reshape(2, -1, k), shift, scale, smooth, backend="triton"), xs),
        "xla_int8_gemm": (lambda q, s: int8_matmul_ref(q, wq), xqs),
        **qdit_methods(inp),
    }


def qdit_methods(inp: dict[str, Any], group: int = 128) -> dict[str, tuple[Callable, list[tuple]]]:
    """Q-DiT's layer (``qdit-w4a8`` / ``qdit-w6a8``): asymmetric per-token-per-group A8 (the jnp quantizer,
    fused by XLA) x asymmetric per-group W4 (packed) / W6 (int8 codes), group 128, on the Pallas-Triton group
    GEMM (``qdit_*_pallas``: what the ``pallas`` backend runs) vs the ``xla`` backend's batched int8
    ``dot_general`` + int32 corrections (``qdit_*_xla``)."""
    from vidq_jax.quant.quantizers import QuantSpec, quantize
    from vidq_jax.quant.record import integer_linear

    a_spec = QuantSpec(8, False, "group", group)
    w_f = inp["w_bf16"].T.astype(jnp.float32)
    b = inp["bias"]
    xs = [(x,) for x in inp["xs"]]
    rows = {}
    for bits in (4, 6):
        w_spec = QuantSpec(bits, False, "group", group)
        wq = quantize(w_f, w_spec)
        codes = pk.pack_int4(wq.values) if bits == 4 else wq.values

        def kernel(x, codes=codes, wq=wq):
            q = quantize(x.astype(jnp.float32), a_spec)
            return pk.group_gemm(q.values, q.scale, codes, wq.scale, b, x_zero=q.zero_point, w_zero=wq.zero_point,
                                 backend="triton")

        def xla(x, wq=wq, w_spec=w_spec):
            q = quantize(x.astype(jnp.float32), a_spec)
            y = integer_linear(q.values, q.scale, q.zero_point, a_spec, wq.values, wq.scale, wq.zero_point, w_spec)
            return (y + b).astype(jnp.bfloat16)

        rows[f"qdit_w{bits}a8_pallas"] = (kernel, xs)
        rows[f"qdit_w{bits}a8_xla"] = (xla, xs)
    # the two parts of qdit_w4a8_pallas: the jnp per-group quantizer alone, the group GEMM on its codes
    rows["qdit_quantize_xla"] = (lambda x: tuple(quantize(x.astype(jnp.float32), a_spec)), xs)
    codes, wq = group_codes(inp, group)
    rows["qdit_w4a8_gemm"] = (lambda q, s, z: pk.group_gemm(q, s, codes, wq.scale, b, x_zero=z, w_zero=wq.zero_point,
                                                            backend="triton"), qdit_inputs(inp, group))
    return rows


def group_codes(inp: dict[str, Any], group: int = 128) -> tuple:
    """Q-DiT's asymmetric per-group int4 weight of this shape: (packed codes, the QTensor)."""
    from vidq_jax.quant.quantizers import QuantSpec, quantize

    wq = quantize(inp["w_bf16"].T.astype(jnp.float32), QuantSpec(4, False, "group", group))
    return pk.pack_int4(wq.values), wq


def qdit_inputs(inp: dict[str, Any], group: int = 128) -> list[tuple]:
    """The input sets quantized per token and group (asymmetric A8): ``(codes, scales, zero points)``."""
    from vidq_jax.quant.quantizers import QuantSpec, quantize

    return [tuple(quantize(x.astype(jnp.float32), QuantSpec(8, False, "group", group))) for x in inp["xs"]]


# group GEMM tilings the sweep tries (``GroupTiling`` fields; fitted to each shape); add more with --group-cands
GROUP_CANDS = (
    dict(bm=128, bn=128, num_warps=8),                      # stored default (unpack="xla")
    dict(bm=128, bn=128, num_warps=8, unpack="kernel"),    # session 6's kernel (nibbles split in registers)
    dict(bm=64, bn=128, num_warps=8), dict(bm=64, bn=128, num_warps=4), dict(bm=128, bn=64, num_warps=4),
    dict(bm=64, bn=64, num_warps=4), dict(bm=64, bn=64, num_warps=4, skew=True),
    dict(bm=64, bn=128, num_warps=8, skew=True), dict(bm=128, bn=128, num_warps=8, num_stages=4),
    dict(bm=64, bn=128, num_warps=8, num_stages=2), dict(bm=64, bn=64, num_warps=2), dict(bm=128, bn=256, num_warps=8),
)


def run_group_sweep(args) -> None:
    """Time :func:`pallas_kernels.group_gemm` (Q-DiT W4A8, group 128, pre-quantized codes) per ``GroupTiling``
    candidate on each shape; candidates must reproduce the reference's integer sums; print the best and the
    ``triton_group`` rows for ``pallas_kernels/ops/w4a8_linear/configs.json``."""
    from pallas_kernels.ops.w4a8_linear import GroupTiling
    from pallas_kernels.ops.w4a8_linear.triton import fit_group_tiling

    cands = [GroupTiling(**c) for c in GROUP_CANDS] + [GroupTiling(**json.loads(c)) for c in args.group_cands or []]
    best: dict[str, Any] = {}
    for m, (k, n) in itertools.product(args.ms, args.kns):
        inp = make_inputs(m, k, n)
        b = inp["bias"]
        codes, wq = group_codes(inp, args.group)
        sets = qdit_inputs(inp, args.group)
        q, s, z = sets[0]
        ones = dict(x_scale=jnp.ones_like(s), w_scale=jnp.ones_like(wq.scale))
        ref = pk.group_gemm_ref(q, ones["x_scale"], codes, ones["w_scale"], x_zero=z, w_zero=wq.zero_point)
        res, seen = [], set()
        for cand in cands:
            fit = fit_group_tiling(cand, m, k, n, args.group, True)
            if fit is None or fit in seen:
                continue
            seen.add(fit)
            try:
                y = pk.group_gemm(q, ones["x_scale"], codes, ones["w_scale"], x_zero=z, w_zero=wq.zero_point,
                                  backend="triton", out_dtype=jnp.float32, tiling=fit)
                if not bool(jnp.array_equal(y, ref)):
                    print(f"  WRONG {fit}", flush=True)
                    continue
                fn = (lambda q, s, z, c=fit: pk.group_gemm(q, s, codes, wq.scale, b, x_zero=z, w_zero=wq.zero_point,
                                                           backend="triton", tiling=c))
                res.append((bench(fn, sets, iters=args.iters, reps=3), fit))
            except Exception as e:  # noqa: BLE001
                print(f"  FAIL {fit}: {e!r}"[:600], flush=True)
        res.sort(key=lambda r: r[0])
        print(f"M={m} K={k} N={n}: " + ", ".join(f"{t:.1f}us {c}" for t, c in res), flush=True)
        if res:
            best[f"{m},{k},{n}"] = dataclasses.asdict(res[0][1])
        del inp
    print("BEST triton_group " + json.dumps(best))


def check_outputs(inp: dict[str, Any]) -> None:
    """Assert the timed Pallas paths agree with their references on this shape's inputs."""
    x, wq, ws, b = inp["xs"][0], inp["wq"], inp["w_scale"], inp["bias"]
    for y, r in ((pk.w8a8_linear(x, inp["wq_asym"], inp["wa_scale"], b, backend="mosaic", w_zero_point=inp["w_zero"]),
                  pk.w8a8_linear_ref(x, inp["wq_asym"], inp["wa_scale"], b, w_zero_point=inp["w_zero"])),
                 (pk.fp8_linear(x, inp["w_fp8"], inp["w_fp8_scale"], b, backend="mosaic"),
                  pk.fp8_linear_ref(x, inp["w_fp8"], inp["w_fp8_scale"], b))):
        y, r = y.astype(jnp.float32), r.astype(jnp.float32)
        rel = float(jnp.linalg.norm(y - r) / jnp.linalg.norm(r))
        assert rel < 5e-3, rel
    q, s = quantize_per_token(x, backend="triton")
    qr, sr = pk.quantize_per_token_ref(x)
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32) - qr.astype(jnp.int32)))) <= 1
    assert bool(jnp.allclose(s, sr, rtol=1e-6))
    y = pk.w8a8_linear(x, wq, ws, b, backend="mosaic").astype(jnp.float32)
    r = pk.w8a8_linear_ref(x, wq, ws, b).astype(jnp.float32)
    rel = float(jnp.linalg.norm(y - r) / jnp.linalg.norm(r))
    assert rel < 5e-3, rel


def run_table(args) -> list[dict[str, Any]]:
    rows = []
    meta = dict(gpu=gpu_name(), jax_version=jax.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    for m, (k, n) in itertools.product(args.ms, args.kns):
        inp = make_inputs(m, k, n)
        check_outputs(inp)
        times = {}
        for name, (fn, arg_sets) in methods(inp).items():
            if args.only and name not in args.only and name != "xla_bf16":
                continue
            try:
                times[name] = bench(fn, arg_sets, iters=args.iters, reps=args.reps)
            except Exception as e:  # noqa: BLE001 - record and keep going
                print(f"  {name} M={m} K={k} N={n} FAILED: {e!r}"[:400], flush=True)
                times[name] = float("nan")
        base = times["xla_bf16"]
        ops = 2.0 * m * k * n
        for name, t in times.items():
            rows.append(dict(meta, M=m, K=k, N=n, method=name, time_us=round(t, 2),
                             tops=round(ops / t / 1e6, 1) if t == t else None,
                             speedup_vs_bf16=round(base / t, 3) if t == t else None))
        print(f"M={m} K={k} N={n} " + " ".join(
            f"{nm}={t:.1f}us({base / t:.2f}x)" for nm, t in times.items()), flush=True)
        del inp
    return rows


def write_md(rows: list[dict[str, Any]], path: str) -> None:
    meta = rows[0]
    shapes = sorted({(r["M"], r["K"], r["N"]) for r in rows}, key=lambda s: (s[0], s[1], s[2]))
    names = list(dict.fromkeys(r["method"] for r in rows))
    t = {(r["M"], r["K"], r["N"], r["method"]): r for r in rows}
    lines = [
        f"# Linear benchmarks ({meta['gpu']}, JAX {meta['jax_version']}, {meta['date']})", "",
        "Median per-call time in µs (ratio to XLA bf16 in parentheses; >1 is faster). "
        "`pallas_gemm_epilogue`/`xla_gemm_epilogue` start from pre-quantized int8 activations "
        "(quantization fused into the producer); `*_int8_gemm` is the bare s8xs8->s32 GEMM.", "",
        "| M | K | N | " + " | ".join(names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for s in shapes:
        cells = []
        for nm in names:
            r = t.get((*s, nm))
            if r is None or r["speedup_vs_bf16"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{r['time_us']:.1f} ({r['speedup_vs_bf16']:.2f}x)")
        lines.append(f"| {s[0]} | {s[1]} | {s[2]} | " + " | ".join(cells) + " |")
    dates = sorted({r["date"] for r in rows})
    if len(dates) > 1:
        lines += ["", "Rows come from runs started at: " + ", ".join(dates)
                  + " (see `date` per row in linear.json)."]
    lines += ["", "Geometric-mean speed-up vs XLA bf16:", ""]
    for nm in names:
        sp = [t[(*s, nm)]["speedup_vs_bf16"] for s in shapes
              if (*s, nm) in t and t[(*s, nm)]["speedup_vs_bf16"]]
        if sp:
            lines.append(f"- {nm}: {math.exp(sum(map(math.log, sp)) / len(sp)):.2f}x")
    gem = [(s, t[(*s, "pallas_int8_gemm")]["time_us"], t[(*s, "xla_int8_gemm")]["time_us"])
           for s in shapes if (*s, "pallas_int8_gemm") in t and (*s, "xla_int8_gemm") in t]
    if gem:
        lines += ["", "Pallas int8 GEMM / cuBLASLt (XLA int8) throughput:", ""]
        lines += [f"- M={s[0]} K={s[1]} N={s[2]}: {xl / pa * 100:.0f}%" for s, pa, xl in gem]
    Path(path).write_text("\n".join(lines) + "\n")


def run_sweep(args) -> None:
    """Time Mosaic GPU tile configs for the scaled GEMM on each shape; print the best."""
    cands = [mosaic.MosaicGemmConfig(tm, tn, tk, st, order)
             for tm, tn, tk, st, order in itertools.product(
                 args.tms, args.tns, args.tks, args.stages, args.orders)]
    for spec in args.cands or []:  # "ws:tm,tn,tk,stages[,delay[,chain]]" or "v1:tm,tn,tk,stages"
        kind, vals = spec.split(":")
        v = vals.split(",")
        cands.append(mosaic.MosaicGemmConfig(
            int(v[0]), int(v[1]), int(v[2]), int(v[3]), "nm", ws=kind == "ws",
            delay_release=int(v[4]) if len(v) > 4 else 1, chain=len(v) > 5 and v[5] == "chain"))
    best: dict[str, Any] = {}
    for m, (k, n) in itertools.product(args.ms, args.kns):
        inp = make_inputs(m, k, n)
        xqs = [(q, s) for q, s in inp["xq"]]
        wq, ws, b = inp["wq"], inp["w_scale"], inp["bias"]
        ref_i32 = jax.jit(int8_matmul_ref)(xqs[0][0], wq)
        ref = scaled_epilogue_ref(ref_i32, xqs[0][1], ws, b, jnp.bfloat16)
        res = []
        for cfg in cands:
            if not mosaic.supports(k, n, cfg):
                continue
            try:
                if args.int32:
                    ok = bool(jnp.array_equal(mosaic.mosaic_int8_gemm(xqs[0][0], wq, cfg=cfg),
                                              ref_i32))
                else:
                    y = mosaic.mosaic_int8_gemm(xqs[0][0], wq, xqs[0][1], ws, b, cfg=cfg,
                                                out_dtype=jnp.bfloat16)
                    ok = bool(jnp.allclose(y.astype(jnp.float32), ref.astype(jnp.float32),
                                           rtol=1e-2, atol=1e-2))
                if not ok:
                    print(f"  WRONG {cfg}", flush=True)
                    continue
                fn = (lambda q, s, c=cfg: mosaic.mosaic_int8_gemm(
                    q, wq, s, ws, b, cfg=c, out_dtype=jnp.bfloat16))
                if args.int32:
                    fn = (lambda q, s, c=cfg: mosaic.mosaic_int8_gemm(q, wq, cfg=c))
                t = bench(fn, xqs, iters=args.iters, reps=3)
                res.append((t, cfg))
            except Exception as e:  # noqa: BLE001
                print(f"  FAIL {cfg}: {e!r}"[:600], flush=True)
        res.sort(key=lambda r: r[0])
        ops = 2.0 * m * k * n
        print(f"M={m} K={k} N={n}: " + ", ".join(
            f"({'ws' if c.ws else 'v1'},{c.tm},{c.tn},{c.tk},{c.stages},{c.delay_release},"
            f"{'chain' if c.chain else ''})={t:.1f}us/{ops / t / 1e6:.0f}T"
            for t, c in res[:6]), flush=True)
        if res:
            c = res[0][1]
            row = {f"{m},{k},{n}": dict(tm=c.tm, tn=c.tn, tk=c.tk, stages=c.stages, order=c.order,
                                        ws=c.ws, delay_release=c.delay_release, chain=c.chain)}
            best.update(row)
            if args.store:  # after every shape: a run cut by a time limit keeps what it found
                _config.store(CONFIG_FILE, gpu_name(), f"mosaic_gemm_{'int32' if args.int32 else 'scaled'}", row)
                print(f"stored {row} for {gpu_name()!r} in {CONFIG_FILE}", flush=True)
        del inp
    print("BEST " + json.dumps(best))
    if args.sweep_json:
        Path(args.sweep_json).write_text(json.dumps({gpu_name(): best}, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--ms", type=int, nargs="+", default=list(MS))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--kns", nargs="+", default=[f"{k},{n}" for k, n in KNS],
                    help="K,N pairs to run")
    ap.add_argument("--merge-into", help="earlier linear.json whose other shapes are kept")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-json")
    ap.add_argument("--store", action="store_true",
                    help="with --sweep: write each shape's winner into int8_matmul/configs.json for this GPU")
    ap.add_argument("--int32", action="store_true")
    ap.add_argument("--cands", nargs="*")
    ap.add_argument("--tms", type=int, nargs="*", default=[])
    ap.add_argument("--tns", type=int, nargs="*", default=[128, 192])
    ap.add_argument("--tks", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--stages", type=int, nargs="*", default=[2, 4])
    ap.add_argument("--orders", nargs="+", default=["nm"])
    ap.add_argument("--group-sweep", action="store_true", help="tile sweep of Q-DiT's group GEMM (GroupTiling)")
    ap.add_argument("--group-cands", nargs="*", help='extra GroupTiling candidates as JSON, e.g. \'{"bm": 64}\'')
    ap.add_argument("--group", type=int, default=128, help="Q-DiT group size of the group sweep")
    args = ap.parse_args(argv)
    args.kns = [tuple(int(v) for v in kn.split(",")) for kn in args.kns]
    print(f"gpu={gpu_name()} jax={jax.__version__}", flush=True)
    if args.sweep:
        run_sweep(args)
        return
    if args.group_sweep:
        run_group_sweep(args)
        return
    rows = run_table(args)
    if args.merge_into:  # replace this run's shapes in an earlier result file
        done = {(r["M"], r["K"], r["N"]) for r in rows}
        old = json.loads(Path(args.merge_into).read_text())
        rows = [r for r in old if (r["M"], r["K"], r["N"]) not in done] + rows
        rows.sort(key=lambda r: (r["M"], r["K"] != 1152, r["N"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.md:
        write_md(rows, args.md)
        print(Path(args.md).read_text())


if __name__ == "__main__":
    main()

"""Quantized attention against cuDNN bf16 flash attention at the model shapes (GPU).

``python -m benchmarks.bench_attention [--out DIR] [--tiny] [--sweep] [--shapes pixart1024,...]`` writes
``attention.json`` + ``attention.md`` under ``--out`` (default ``benchmarks/results``). Per shape, in one run:

* ``cudnn_bf16`` — ``jax.nn.dot_product_attention(..., implementation="cudnn")`` on bf16 (what the models
  run today, the baseline of ``speedup``); ``xla_bf16`` — ``implementation="xla"``;
* ``qattn_ref`` — the jitted XLA reference of the quantized attention (PixArt shapes only: it holds the
  logits of 1024 query rows at a time);
* ``prepass`` — the XLA pass alone that quantizes K (and V to FP8) and computes the mean query and its
  ``q̄·Kᵀ`` logit bias before the kernel;
* ``kernel:<pv>:<tiling>`` — ``pallas_kernels.quant_attention`` (Pallas-Triton) with the stored tiling for
  bf16 (the presets' default) and FP8 ``P·V`` and, with ``--sweep`` (at the PixArt 1024 px shape) or always
  for the stored one, the layout / tiling alternatives of ``ops/quant_attention/NOTES.md``;
  ``kernel:<pv>:stored:no-q-smoothing`` — the same without Q smoothing (what the smoothing costs);
* ``mgpu_f16:pad<Dp>[:bkv<n>]`` — JAX's own FlashAttention-3 kernel on Mosaic GPU
  (``jax.experimental.pallas.ops.gpu.attention_mgpu``; in float16: its shared-memory tiles are float16 in
  JAX 0.10 and 0.11, so bf16 inputs do not lower; same tensor-core rate), the head zero-padded to the
  multiple of 64 it takes (72 → 128) and Q pre-scaled by 1/√D (the kernel has no softmax scale): the whole
  call with the casts, the pad and the slice, and ``:kernel-only`` on inputs prepared beforehand;
  ``mgpu_f16:d64-bound`` runs it on the first 64 lanes only (a wrong result, the speed a 64-wide head
  would have: the cost of the padding);
* ``kernel:mosaic:<tiling>`` — what ``pallas_kernels.quant_attention(backend="mosaic")`` runs on Hopper (called
  directly: no fallback; Mosaic GPU's interpreter with ``--tiny``), the warp-specialized Mosaic GPU kernel (int8 ``Q·Kᵀ``, bf16 ``P·V``; ``ops/quant_attention/mosaic.py``): its default tiling
  (with and without Q smoothing) and, at the PixArt 1024 px shape (every shape with ``--sweep``), the
  alternatives of :func:`mosaic_configs`; its XLA pre-pass alone as ``prepass:mosaic``.

* ``cudnn_fp8:pad<Dp>`` — cuDNN's FP8 flash attention (inference form: head dim a multiple of 16, so 72 is
  zero-padded to 80; no key mask): Q, K, V scaled per tensor by their dynamic absmax into e4m3, P scaled by 448
  inside, the e4m3 output scaled back to bf16: the whole call with the absmax, casts, pad and slice, and
  ``:kernel-only`` on inputs prepared beforehand. A measurement of what FP8 attention at the models' head width
  would save, not a preset (its output is e4m3: quality unchecked).

``--variants`` picks the groups to run (``cudnn`` always runs: the baseline): ``xla``, ``ref``, ``prepass``,
``triton`` (the ``kernel:<pv>`` rows), ``mgpu``, ``mosaic``, ``cudnn_fp8``.

Every row: ``ms`` (median wall time per call over repetitions, compile excluded), ``speedup`` (cuDNN ms /
ms), ``tflops`` (4·B·H·Nq·Nk·D / time), ``cos_vs_cudnn`` (cosine similarity of the output with cuDNN's
bf16 output) and the GPU name, JAX version and date. A variant that fails is a row with its ``error``.
``--tiny``: toy shapes on the CPU (kernel in interpret mode), rows marked ``tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks.common import environment, median_time, title
from pallas_kernels._compat import on_gpu
from pallas_kernels.ops.quant_attention import QuantAttentionConfig, attention_config
from pallas_kernels.ops.quant_attention.layout import prepare
from pallas_kernels.ops.quant_attention.mosaic import MosaicAttentionConfig, mosaic_operands, mosaic_quant_attention

try:  # JAX's FlashAttention-3 on Mosaic GPU (same API in JAX 0.10 and 0.11)
    from jax.experimental.pallas.ops.gpu import attention_mgpu
except Exception:  # noqa: BLE001 - no Mosaic GPU in this JAX build
    attention_mgpu = None

# name: (B, Nq, Nk, H, D, key mask) — CFG batches of the XL models
SHAPES = {
    "pixart1024": (2, 4096, 4096, 16, 72, False),  # PixArt-XL 1024 px: 64x64 latent tokens
    "pixart1024-cross": (2, 4096, 120, 16, 72, True),  # its cross-attention to 120 caption tokens
    "pixart2048": (2, 16384, 16384, 16, 72, False),  # PixArt-Σ 2K-style length
    "stdit-spatial": (32, 1024, 1024, 16, 72, False),  # STDiT-XL 16x512x512: B·T = 2·16 frames of 32x32
    "stdit3-720p": (30, 3600, 3600, 16, 72, False),  # STDiT3 720p 51 frames: 2·15 latent frames of 45x80
}
TINY_SHAPES = {"tiny": (1, 40, 40, 2, 72, False), "tiny-cross": (1, 40, 12, 2, 72, True)}
REF_SHAPES = ("pixart1024", "pixart1024-cross", "tiny", "tiny-cross")
VARIANT_GROUPS = ("xla", "ref", "prepass", "triton", "mgpu", "mosaic", "cudnn_fp8")


def mosaic_configs(full: bool) -> dict[str, MosaicAttentionConfig]:
    """The Mosaic kernel's default tiling, then (``full``) the head-width padding and ring alternatives."""
    base = MosaicAttentionConfig()
    out = {"default": base}
    if full:
        out.update({
            "qk128": dataclasses.replace(base, qk_pad=128),
            "kv64-s4": dataclasses.replace(base, block_kv=64, stages=4),
            "kv128-s3": dataclasses.replace(base, stages=3),
            "kv256": dataclasses.replace(base, block_kv=256),
        })
    return out


def mgpu_rows(b: int, nq: int, nk: int, d: int, masked: bool):
    """``(variant, fn, args-maker or None, note)`` of JAX's ``attention_mgpu`` where it applies (no key mask,
    ``Nq`` a multiple of 128 and ``Nk`` of ``block_kv``), else one ``(variant, None, None, why)``."""
    if attention_mgpu is None:
        return [("mgpu_f16", None, None, "jax.experimental.pallas.ops.gpu.attention_mgpu not importable")]
    dp = -(-d // 64) * 64
    if masked or nq % 128 or nk % 64:
        return [("mgpu_f16", None, None, "not applicable: needs no mask, Nq % 128 == 0, Nk % block_kv == 0")]
    cfg = lambda bkv: attention_mgpu.TuningConfig(block_q=64, block_kv=bkv, max_concurrent_steps=2)  # noqa: E731
    bkvs = [n for n in (128, 64) if nk % n == 0]  # 256 exceeds shared memory at the padded width

    def padded(q, k, v, m=None, width=dp):
        f16 = lambda x: x[..., :width].astype(jnp.float16)  # noqa: E731
        pad = lambda x: jnp.pad(f16(x), ((0, 0),) * 3 + ((0, width - d),)) if width > d else f16(x)  # noqa: E731
        return pad(q * jnp.asarray(1.0 / np.sqrt(d), q.dtype)), pad(k), pad(v)

    def whole(q, k, v, m, bkv=bkvs[0]):
        return attention_mgpu.attention(*padded(q, k, v), cfg(bkv))[..., :d].astype(q.dtype)

    rows = [(f"mgpu_f16:pad{dp}", whole, None, f"JAX attention_mgpu (f16), head padded {d}->{dp}, casts+pad+slice")]
    for bkv in bkvs:
        rows.append((f"mgpu_f16:pad{dp}:bkv{bkv}:kernel-only",
                     lambda q, k, v, m, bkv=bkv: attention_mgpu.attention(q, k, v, cfg(bkv)), padded,
                     "JAX attention_mgpu (f16) on inputs prepared beforehand"))
    if d > 64:
        rows.append(("mgpu_f16:d64-bound", lambda q, k, v, m: attention_mgpu.attention(q, k, v, cfg(bkvs[0])),
                     functools.partial(padded, width=64),
                     "kernel only, first 64 lanes: wrong result, the speed bound without padding"))
    return rows


def cudnn_fp8_rows(d: int, masked: bool):
    """``(variant, fn, args-maker or None, note)`` of cuDNN's FP8 attention (JAX's private cuDNN entry point:
    ``jax.nn.dot_product_attention`` has no FP8 form), or one ``(variant, None, None, why)``."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except Exception as e:  # noqa: BLE001 - a JAX build without it
        return [("cudnn_fp8", None, None, f"jax._src.cudnn.fused_attention_stablehlo not importable: {e}")]
    dp = -(-d // 16) * 16
    if masked:
        return [("cudnn_fp8", None, None, "not applicable: cuDNN's FP8 attention takes no key mask")]
    e4m3, fmax, p_scale = jnp.float8_e4m3fn, 448.0, 448.0

    def prepared(q, k, v, m=None):
        def one(x):
            amax = jnp.maximum(jnp.max(jnp.abs(x)).astype(jnp.float32), 1e-12)
            x8 = (x.astype(jnp.float32) * (fmax / amax)).astype(e4m3)
            return jnp.pad(x8, ((0, 0),) * 3 + ((0, dp - d),)), (amax / fmax).reshape(1, 1, 1, 1)
        (q8, dq), (k8, dk), (v8, dv) = one(q), one(k), one(v)
        return q8, k8, v8, dq, dk, dv

    def kernel(q8, k8, v8, dq, dk, dv):
        unit = jnp.ones((1, 1, 1, 1), jnp.float32)
        params = dict.fromkeys(fa.fp8_params_keys, unit)  # the backward pass's factors: unused
        params.update(descale_q=dq, descale_k=dk, descale_v=dv, descale_s=unit / p_scale,
                      scale_s=unit * p_scale, scale_o=1.0 / dv)  # |O| <= amax(V): O / descale_v fits e4m3
        out, _, _ = fa.dot_product_attention(q8, k8, v8, fp8_params=params, scale=1.0 / float(np.sqrt(d)),
                                             use_fp8=True, qkv_layout="BTNH")
        return out

    def whole(q, k, v, m):
        q8, k8, v8, dq, dk, dv = prepared(q, k, v)
        return (kernel(q8, k8, v8, dq, dk, dv)[..., :d].astype(jnp.float32) * dv).astype(q.dtype)

    return [(f"cudnn_fp8:pad{dp}", whole, None,
             f"cuDNN FP8 attention, per-tensor e4m3 Q/K/V, head padded {d}->{dp}, absmax+casts+pad+slice"),
            (f"cudnn_fp8:pad{dp}:kernel-only", lambda q8, k8, v8, dq, dk, dv, m: kernel(q8, k8, v8, dq, dk, dv),
             prepared, "cuDNN FP8 attention on inputs prepared beforehand (e4m3 output)")]


def sweep_configs(stored: QuantAttentionConfig, full: bool) -> dict[str, QuantAttentionConfig]:
    """The stored tiling, then the alternatives (layout options of the head width, tiles, warps, stages)."""
    out = {"stored": stored}
    if not full:
        return out
    rep = lambda **kw: dataclasses.replace(stored, **kw)  # noqa: E731
    out.update({
        "pad128-prepassq": rep(head_split="pad", fuse_q=False),
        "window-prepassq": rep(fuse_q=False),
        "v_nd": rep(v_layout="nd"),
        "m64": rep(block_m=64),
        "m64-w4-s3": rep(block_m=64, num_stages=3),
        "n128-w8": rep(block_n=128, num_warps=8),
        "m128-n128-w8-s3": rep(block_n=128, num_warps=8, num_stages=3),
        "w8": rep(num_warps=8),
        "s3": rep(num_stages=3),
        "s4": rep(num_stages=4),
        "m256-w8": rep(block_m=256, num_warps=8),
    })
    return out


def inputs(shape, seed: int):
    b, nq, nk, h, d, masked = shape
    rng = np.random.default_rng(seed)
    cast = lambda a: jnp.asarray(a.astype(np.float32), jnp.bfloat16)  # noqa: E731
    q = cast(rng.standard_normal((b, nq, h, d)) + 0.5 * rng.standard_normal((1, 1, h, d)))
    k = cast(rng.standard_normal((b, nk, h, d)) + 2.0 * rng.standard_normal((1, 1, h, d)))
    v = cast(rng.standard_normal((b, nk, h, d)))
    mask = jnp.asarray(np.arange(nk)[None, :] < rng.integers(nk // 2, nk + 1, (b, 1))) if masked else None
    return q, k, v, mask


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bench_shape(name: str, shape, *, sweep: bool, tiny: bool, iters: int,
                variants: tuple[str, ...] = VARIANT_GROUPS) -> list[dict]:
    b, nq, nk, h, d, masked = shape
    base = {**environment(), "shape": name, "B": b, "Nq": nq, "Nk": nk, "H": h, "D": d, "masked": masked,
            "tiny": tiny}
    flops = 4.0 * b * h * nq * nk * d
    arg_sets = [inputs(shape, seed) for seed in (0, 1)]
    rows: list[dict] = []
    baseline: dict = {}

    def timed(variant: str, f, note: str = "", extra: dict | None = None, make_args=None) -> None:
        row = {**base, "variant": variant, "note": note, **(extra or {})}
        try:
            if f is None:
                raise NotImplementedError(note)
            fn = jax.jit(f)
            sets = arg_sets if make_args is None else [(*jax.jit(make_args)(*a), None) for a in arg_sets]
            out = jax.block_until_ready(fn(*sets[0]))
            if "out" in baseline and getattr(out, "shape", None) == baseline["out"].shape:
                row["cos_vs_cudnn"] = cosine(out, baseline["out"])
            row["ms"] = median_time(fn, sets, iters=iters, reps=5, warmup=1)["median_ms"]
            if not variant.startswith("prepass"):
                row["tflops"] = flops / row["ms"] * 1e-9
            if variant == "cudnn_bf16" or (variant == "xla_bf16" and "out" not in baseline):
                baseline.update(out=out, ms=row["ms"], name=variant)
        except Exception as e:  # noqa: BLE001 - a failing variant is a result too
            row["error"] = f"{type(e).__name__}: {e}"[:400]
            traceback.print_exc()
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("shape", "variant", "ms", "tflops", "cos_vs_cudnn", "error")}),
              flush=True)

    def dpa(impl):
        return lambda q, k, v, m: jax.nn.dot_product_attention(
            q, k, v, mask=None if m is None else m[:, None, None, :], implementation=impl)

    timed("cudnn_bf16", dpa("cudnn"), "cuDNN flash attention, bf16 (the models' path)")
    if "xla" in variants:
        timed("xla_bf16", dpa("xla"), "XLA attention, bf16")
    stored = attention_config(nq, d, nk)
    if name in REF_SHAPES and "ref" in variants:
        timed("qattn_ref", lambda q, k, v, m: pk.quant_attention(q, k, v, m, backend="xla"), "XLA reference, FP8 P·V")
    if "mgpu" in variants and not tiny:
        for variant, f, make_args, note in mgpu_rows(b, nq, nk, d, masked):
            timed(variant, f, note, make_args=make_args)
    if "cudnn_fp8" in variants and not tiny:
        for variant, f, make_args, note in cudnn_fp8_rows(d, masked):
            timed(variant, f, note, make_args=make_args)
    if "mosaic" in variants:
        timed("prepass:mosaic", lambda q, k, v, m: mosaic_operands(q, k, v, m),
              "XLA pass of the Mosaic kernel (quantized, padded, heads-first operands) alone")
        for cname, mcfg in mosaic_configs(sweep or name == "pixart1024").items():  # few: always at PixArt 1024
            for smooth_q in (True, False) if cname == "default" else (True,):
                timed(f"kernel:mosaic:{cname}" + ("" if smooth_q else ":no-q-smoothing"),
                      lambda q, k, v, m, mcfg=mcfg, sq=smooth_q: mosaic_quant_attention(
                          q, k, v, m, smooth_q=sq, cfg=mcfg, interpret=not on_gpu()),  # no silent fallback
                      "Mosaic GPU warp-specialized, int8 QK, bf16 P·V" + ("" if smooth_q else ", no Q smoothing"),
                      {"tiling": dataclasses.asdict(mcfg), "pv": "bf16", "smooth_q": smooth_q})
    if "prepass" in variants:
        timed("prepass", lambda q, k, v, m: prepare(
            q, k, v, m, pv="fp8", q_block=1, k_block=1, smooth_k=True, smooth_q=True, block_m=stored.block_m,
            block_n=stored.block_n, head_split=stored.head_split, fuse_q=stored.fuse_q, v_layout=stored.v_layout),
            "XLA K/V quantization and q̄·Kᵀ alone")
    backend = "triton"  # interpret mode off GPU (--tiny)
    for pv in ("bf16", "fp8") if "triton" in variants else ():
        cfgs = sweep_configs(stored, sweep and (pv == "fp8" and name == "pixart1024" or tiny))
        for cname, cfg in cfgs.items():
            for smooth_q in (True, False) if cname == "stored" else (True,):
                timed(f"kernel:{pv}:{cname}" + ("" if smooth_q else ":no-q-smoothing"),
                      lambda q, k, v, m, cfg=cfg, pv=pv, sq=smooth_q: pk.quant_attention(
                          q, k, v, m, pv=pv, smooth_q=sq, config=cfg, backend=backend),
                      f"Pallas-Triton, {pv} P·V" + ("" if smooth_q else ", no Q smoothing"),
                      {"tiling": dataclasses.asdict(cfg), "pv": pv, "smooth_q": smooth_q})
    return _speedups(rows, baseline)


def _speedups(rows: list[dict], baseline: dict) -> list[dict]:
    for r in rows:
        if r.get("ms") and baseline.get("ms") and not r["variant"].startswith("prepass"):
            r["speedup"] = baseline["ms"] / r["ms"]
            r["baseline"] = baseline["name"]  # xla_bf16 where cuDNN does not run (CPU)
    return rows


def to_markdown(rows: list[dict]) -> str:
    env = rows[0] if rows else environment()
    heading = f"Quantized attention vs cuDNN bf16 ({env.get('gpu')}, JAX {env.get('jax_version')}, {env.get('date')})"
    lines = ["# " + title(heading, any(r.get("tiny") for r in rows)), "",
             "`python -m benchmarks.bench_attention`: median wall time per call (compile excluded). "
             "`speedup` = cuDNN bf16 ms / ms (XLA bf16 where cuDNN does not run) (target >= 1.5 for the kernel); `TFLOPS` = 4·B·H·Nq·Nk·D / time; "
             "`cos` = cosine similarity of the output with cuDNN's bf16 output. Kernel tilings: "
             "`pallas_kernels/ops/quant_attention/NOTES.md`.", "",
             "| shape (B, Nq, Nk, H, D) | variant | ms | speedup | TFLOPS | cos vs cuDNN | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda key, fmt: (fmt.format(r[key]) if r.get(key) is not None else "")  # noqa: E731
        note = f"ERROR {r['error'][:160]}" if r.get("error") else r.get("note", "")
        shape = f"{r['shape']} ({r['B']}, {r['Nq']}, {r['Nk']}, {r['H']}, {r['D']}){' masked' if r['masked'] else ''}"
        lines.append(f"| {shape} | {r['variant']} | {f('ms', '{:.3f}')} | {f('speedup', '{:.2f}')} | "
                     f"{f('tflops', '{:.0f}')} | {f('cos_vs_cudnn', '{:.6f}')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder of attention.json / attention.md (default benchmarks/results)")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (CPU smoke test), rows marked tiny")
    ap.add_argument("--sweep", action="store_true", help="tiling / layout alternatives at the PixArt 1024 px shape")
    ap.add_argument("--shapes", default=None, help=f"comma-separated subset of {list(SHAPES)}")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--variants", default=",".join(VARIANT_GROUPS),
                    help=f"comma-separated groups of {VARIANT_GROUPS} (cuDNN always runs)")
    args = ap.parse_args(argv)
    variants = tuple(args.variants.split(","))
    if set(variants) - set(VARIANT_GROUPS):
        ap.error(f"--variants: unknown {sorted(set(variants) - set(VARIANT_GROUPS))}; choose from {VARIANT_GROUPS}")
    table = TINY_SHAPES if args.tiny else SHAPES
    names = list(table) if args.shapes is None or args.tiny else args.shapes.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"--shapes: unknown {unknown}; choose from {list(table)}")
    if not args.tiny and not on_gpu():
        print("note: no GPU here; the kernel rows run in interpret mode (use --tiny for a smoke test)", flush=True)
    rows = []
    for n in names:
        rows += bench_shape(n, table[n], sweep=args.sweep, tiny=args.tiny, iters=1 if args.tiny else args.iters,
                            variants=variants)
    folder = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "attention_tiny" if args.tiny else "attention"
    (folder / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=str))
    (folder / f"{stem}.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

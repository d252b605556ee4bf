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
  ``kernel:<pv>:stored:no-q-smoothing`` — the same without Q smoothing (what the smoothing costs).

Every row: ``ms`` (median wall time per call over repetitions, compile excluded), ``speedup`` (cuDNN ms /
ms), ``tflops`` (4·B·H·Nq·Nk·D / time), ``cos_vs_cudnn`` (cosine similarity of the output with cuDNN's
bf16 output) and the GPU name, JAX version and date. A variant that fails is a row with its ``error``.
``--tiny``: toy shapes on the CPU (kernel in interpret mode), rows marked ``tiny``.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def bench_shape(name: str, shape, *, sweep: bool, tiny: bool, iters: int) -> list[dict]:
    b, nq, nk, h, d, masked = shape
    base = {**environment(), "shape": name, "B": b, "Nq": nq, "Nk": nk, "H": h, "D": d, "masked": masked,
            "tiny": tiny}
    flops = 4.0 * b * h * nq * nk * d
    arg_sets = [inputs(shape, seed) for seed in (0, 1)]
    rows: list[dict] = []
    baseline: dict = {}

    def timed(variant: str, f, note: str = "", extra: dict | None = None) -> None:
        row = {**base, "variant": variant, "note": note, **(extra or {})}
        try:
            fn = jax.jit(f)
            out = jax.block_until_ready(fn(*arg_sets[0]))
            if "out" in baseline and getattr(out, "shape", None) == baseline["out"].shape:
                row["cos_vs_cudnn"] = cosine(out, baseline["out"])
            row["ms"] = median_time(fn, arg_sets, iters=iters, reps=5, warmup=1)["median_ms"]
            if variant != "prepass":
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
    timed("xla_bf16", dpa("xla"), "XLA attention, bf16")
    stored = attention_config(nq, d, nk)
    if name in REF_SHAPES:
        timed("qattn_ref", lambda q, k, v, m: pk.quant_attention(q, k, v, m, backend="xla"), "XLA reference, FP8 P·V")
    timed("prepass", lambda q, k, v, m: prepare(
        q, k, v, m, pv="fp8", q_block=1, k_block=1, smooth_k=True, smooth_q=True, block_m=stored.block_m,
        block_n=stored.block_n, head_split=stored.head_split, fuse_q=stored.fuse_q, v_layout=stored.v_layout),
        "XLA K/V quantization and q̄·Kᵀ alone")
    backend = "triton"  # interpret mode off GPU (--tiny)
    for pv in ("bf16", "fp8"):
        cfgs = sweep_configs(stored, sweep and (pv == "fp8" and name == "pixart1024" or tiny))
        for cname, cfg in cfgs.items():
            for smooth_q in (True, False) if cname == "stored" else (True,):
                timed(f"kernel:{pv}:{cname}" + ("" if smooth_q else ":no-q-smoothing"),
                      lambda q, k, v, m, cfg=cfg, pv=pv, sq=smooth_q: pk.quant_attention(
                          q, k, v, m, pv=pv, smooth_q=sq, config=cfg, backend=backend),
                      f"Pallas-Triton, {pv} P·V" + ("" if smooth_q else ", no Q smoothing"),
                      {"tiling": dataclasses.asdict(cfg), "pv": pv, "smooth_q": smooth_q})
    for r in rows:
        if r.get("ms") and baseline.get("ms") and r["variant"] != "prepass":
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
    args = ap.parse_args(argv)
    table = TINY_SHAPES if args.tiny else SHAPES
    names = list(table) if args.shapes is None or args.tiny else args.shapes.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"--shapes: unknown {unknown}; choose from {list(table)}")
    if not args.tiny and not on_gpu():
        print("note: no GPU here; the kernel rows run in interpret mode (use --tiny for a smoke test)", flush=True)
    rows = []
    for n in names:
        rows += bench_shape(n, table[n], sweep=args.sweep, tiny=args.tiny, iters=1 if args.tiny else args.iters)
    folder = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "attention_tiny" if args.tiny else "attention"
    (folder / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=str))
    (folder / f"{stem}.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

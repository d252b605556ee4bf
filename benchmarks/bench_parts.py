"""Micro-benchmarks of the parts of a denoising step that are not the block GEMMs (GPU).

Questions the step profile (``benchmarks/results/e2e.md``) raises, answered at the XL shapes,
each variant timed in the same run:

* ``quantize``: the per-token int8 quantizer (Pallas-Triton row-block kernel) over its configs,
  against the XLA fusion and a read-bf16 / write-int8 copy (the memory floor a quantizer can reach).
* ``attention``: where the attention time goes (spatial, temporal, cross; cuDNN flash vs XLA) and
  what the temporal self-attention of the video models costs in each layout / implementation.
* ``qkv``: the fused qkv linear + attention with one N=3C GEMM and q/k/v slices vs three N=C GEMMs.

``python -m benchmarks.bench_parts [--only quantize|attention|qkv] [--out DIR]`` writes
``bench_parts.json`` + ``.md`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.common import environment, median_time
from models.attention import reference_attention as attention
from pallas_kernels import frame_attention, frame_attention_ref
from pallas_kernels.ops.quantize import quantize_per_token_ref, quantize_tiling
from pallas_kernels.ops.quantize.triton import QuantizeTiling, triton_quantize_per_token

QUANT_SHAPES = [(8192, 1152), (8192, 4608), (32768, 1152), (32768, 4608)]


def _inputs(shape, n=3, dtype=jnp.bfloat16, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return [(jax.random.normal(k, shape, jnp.float32).astype(dtype) * 3,) for k in keys]


def quantize_tilings(k: int) -> dict[str, QuantizeTiling | None]:
    """The stored config plus row-block / warp sweeps that keep 9..144 floats per thread."""
    configs: dict[str, QuantizeTiling | None] = {"stored": None}
    chunk = 128 if k % 512 else 512
    for warps in (2, 4, 8):
        for bm in (1, 2, 4, 8, 16, 32):
            per_thread = bm * k // (32 * warps)
            if 9 <= per_thread <= 144 and bm * chunk >= 32 * warps:
                configs[f"bm{bm}_w{warps}_c{chunk}"] = QuantizeTiling(bm=bm, num_warps=warps, chunk=chunk)
    return configs


def bench_quantize(rows: list[dict], batch: int = 8) -> None:
    """Each timing runs ``batch`` quantizations on different inputs inside one jitted call, so the
    per-call time is GPU time, not Python dispatch."""
    many = lambda f: jax.jit(lambda xs: [f(x) for x in xs])  # noqa: E731
    floor = many(lambda x: (x * 0.5).astype(jnp.int8))
    xla = many(quantize_per_token_ref)
    for m, k in QUANT_SHAPES:
        args = [(tuple(a[0] for a in _inputs((m, k), n=batch, seed=s)),) for s in range(2)]
        ref_q, ref_s = quantize_per_token_ref(args[0][0][0])
        base = {"part": "quantize", "M": m, "K": k}
        per = lambda fn: median_time(fn, args, iters=5)["median_ms"] / batch  # noqa: E731
        rows.append({**base, "variant": "copy_floor", "ms": per(floor)})
        rows.append({**base, "variant": "xla", "ms": per(xla)})
        for name, cfg in quantize_tilings(k).items():
            cfg = cfg or quantize_tiling(k)
            fn = many(lambda x, cfg=cfg: triton_quantize_per_token(x, cfg=cfg))
            try:
                q, s = fn(args[0][0])[0]
                exact = bool(jnp.array_equal(q, ref_q) and jnp.array_equal(s, ref_s))
                t = per(fn)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a result too
                rows.append({**base, "variant": f"triton_{name}", "error": str(e)[:200]})
                continue
            rows.append({**base, "variant": f"triton_{name}", "ms": t, "exact": exact,
                         "config": dataclasses.asdict(cfg)})
        print(*(r for r in rows if r.get("M") == m and r.get("K") == k), sep="\n", flush=True)


def bench_qkv(rows: list[dict]) -> None:
    """qkv linear + spatial attention: one N=3C GEMM then q/k/v slices (copies the attention
    kernel needs contiguous) vs three N=C GEMMs (W8A8: sharing one quantized x)."""
    from pallas_kernels import int8_gemm, quantize_per_token, w8a8_linear

    heads, c = 16, 1152
    d = c // heads
    for name, (batch, seq) in {"pixart": (2, 4096), "stdit_spatial": (32, 1024)}.items():
        m = batch * seq
        args = []
        for i in range(2):
            ks = jax.random.split(jax.random.PRNGKey(20 + i), 3)
            x = jax.random.normal(ks[0], (m, c), jnp.bfloat16)
            w = (jax.random.normal(ks[1], (c, 3 * c), jnp.float32) / 34)
            bias = jax.random.normal(ks[2], (3 * c,), jnp.float32) * 0.1
            ws = jnp.max(jnp.abs(w), axis=0) / 127
            qw = jnp.clip(jnp.round(w / ws), -127, 127).astype(jnp.int8).T  # (N, K)
            args.append((x, w.astype(jnp.bfloat16), bias, qw, ws))

        def attend(q, k, v):
            return attention(*(a.reshape(batch, seq, heads, d) for a in (q, k, v))).reshape(m, c)

        def bf16_fused(x, w, bias, qw, ws):
            return attend(*jnp.split(x @ w + bias.astype(jnp.bfloat16), 3, -1))

        def bf16_split(x, w, bias, qw, ws):
            return attend(*(x @ w[:, i * c:(i + 1) * c] + bias[i * c:(i + 1) * c].astype(jnp.bfloat16)
                            for i in range(3)))

        def w8a8_fused(x, w, bias, qw, ws):
            return attend(*jnp.split(w8a8_linear(x, qw, ws, bias), 3, -1))

        def w8a8_split(x, w, bias, qw, ws):
            xq, xs = quantize_per_token(x, backend="triton")
            return attend(*(int8_gemm(xq, qw[i * c:(i + 1) * c], xs, ws[i * c:(i + 1) * c],
                                      bias[i * c:(i + 1) * c], out_dtype=jnp.bfloat16)
                            for i in range(3)))

        ref = None
        for fn_name, f in (("bf16_fused", bf16_fused), ("bf16_split", bf16_split),
                           ("w8a8_fused", w8a8_fused), ("w8a8_split", w8a8_split)):
            fn = jax.jit(f)
            out = fn(*args[0]).astype(jnp.float32)
            ref = out if ref is None else ref
            err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
            rows.append({"part": "qkv_attention", "case": name, "variant": fn_name, "shape": [batch, seq, c],
                         "ms": median_time(fn, args)["median_ms"], "rel_err_vs_current": err})
            print(rows[-1], flush=True)


def _temporal_current(x, wqkv, wproj, t, heads):
    """The model's layout today: (B, T·S, C) -> (B·S, T, C), qkv, attention, proj, back."""
    b, n, c = x.shape
    s = n // t
    h = x.reshape(b, t, s, c).transpose(0, 2, 1, 3).reshape(b * s, t, c)
    qkv = h @ wqkv
    q, k, v = (a.reshape(b * s, t, heads, c // heads) for a in jnp.split(qkv, 3, -1))
    o = attention(q, k, v).reshape(b * s, t, c) @ wproj
    return o.reshape(b, s, t, c).transpose(0, 2, 1, 3).reshape(b, n, c)


def _temporal_split_transpose(x, wqkv, wproj, t, heads):
    """qkv and proj on frame-major tokens; only q/k/v and the attention output are re-laid out."""
    b, n, c = x.shape
    s = n // t
    qkv = x @ wqkv
    q, k, v = (a.reshape(b, t, s, heads, c // heads).transpose(0, 2, 1, 3, 4).reshape(b * s, t, heads, -1)
               for a in jnp.split(qkv, 3, -1))
    o = attention(q, k, v).reshape(b, s, t, c).transpose(0, 2, 1, 3).reshape(b, n, c)
    return o @ wproj


def _temporal_frames(x, wqkv, wproj, t, heads, attend):
    """qkv and proj on frame-major tokens; attention across frames in that layout
    (:func:`pallas_kernels.frame_attention`: the Pallas kernel on GPU; or its einsum reference)."""
    b, n, c = x.shape
    q, k, v = (a.reshape(b, t, n // t, heads, c // heads) for a in jnp.split(x @ wqkv, 3, -1))
    return attend(q, k, v).reshape(b, n, c) @ wproj


def bench_attention(rows: list[dict]) -> None:
    heads, c = 16, 1152
    d = c // heads

    def core(batch, nq, nk, impl, mask=False):
        args = []
        for i in range(3):
            ks = jax.random.split(jax.random.PRNGKey(i), 3)
            q = jax.random.normal(ks[0], (batch, nq, heads, d), jnp.bfloat16)
            k = jax.random.normal(ks[1], (batch, nk, heads, d), jnp.bfloat16)
            v = jax.random.normal(ks[2], (batch, nk, heads, d), jnp.bfloat16)
            args.append((q, k, v))
        if impl == "model":
            fn = jax.jit(attention)
        else:
            fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=impl))
        return median_time(fn, args)["median_ms"]

    cases = [("pixart_self", 2, 4096, 4096), ("stdit_spatial", 32, 1024, 1024),
             ("stdit_temporal", 2048, 16, 16), ("pixart_cross", 2, 4096, 120), ("stdit_cross", 2, 16384, 120)]
    for name, batch, nq, nk in cases:
        for impl in ("cudnn", "xla"):
            try:
                ms = core(batch, nq, nk, impl)
            except Exception as e:  # noqa: BLE001
                rows.append({"part": "attention", "case": name, "variant": impl, "error": str(e)[:200]})
                continue
            rows.append({"part": "attention", "case": name, "variant": impl, "ms": ms,
                         "shape": [batch, nq, nk, heads, d]})
            print(rows[-1], flush=True)

    from pallas_kernels.ops.frame_attention import FrameAttentionConfig, triton_frame_attention

    qkv = [tuple(jax.random.normal(kk, (2, 16, 1024, heads, d), jnp.bfloat16)
                 for kk in jax.random.split(jax.random.PRNGKey(30 + i), 3)) for i in range(2)]
    ref = frame_attention_ref(*qkv[0]).astype(jnp.float32)
    for positions in (2, 4, 8, 16):
        for warps in (1, 2, 4):
            cfg = FrameAttentionConfig(positions=positions, num_warps=warps)
            fn = jax.jit(lambda q, k, v, cfg=cfg: triton_frame_attention(q, k, v, cfg=cfg))
            err = float(jnp.max(jnp.abs(fn(*qkv[0]).astype(jnp.float32) - ref)))
            rows.append({"part": "attention", "case": "stdit_temporal_kernel", "variant": f"bs{positions}_w{warps}",
                         "ms": median_time(fn, qkv)["median_ms"], "shape": [2, 16, 1024, heads, d],
                         "max_abs_err_vs_ref": err})
            print(rows[-1], flush=True)

    b, t, s = 2, 16, 1024
    args = []
    for i in range(3):
        ks = jax.random.split(jax.random.PRNGKey(10 + i), 3)
        args.append((jax.random.normal(ks[0], (b, t * s, c), jnp.bfloat16),
                     (jax.random.normal(ks[1], (c, 3 * c), jnp.float32) / 34).astype(jnp.bfloat16),
                     (jax.random.normal(ks[2], (c, c), jnp.float32) / 34).astype(jnp.bfloat16)))
    ref = None
    for name, f in (("current", _temporal_current), ("split_transpose", _temporal_split_transpose),
                    ("frame_attention_ref", functools.partial(_temporal_frames, attend=frame_attention_ref)),
                    ("frame_attention", functools.partial(_temporal_frames, attend=frame_attention))):
        fn = jax.jit(lambda x, a, p, f=f: f(x, a, p, t, heads))
        out = fn(*args[0]).astype(jnp.float32)
        ref = out if ref is None else ref
        err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
        rows.append({"part": "temporal_module", "variant": name, "ms": median_time(fn, args)["median_ms"],
                     "rel_err_vs_current": err, "shape": [b, t, s, c]})
        print(rows[-1], flush=True)


def to_markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# Step parts ({env['gpu']}, JAX {env['jax_version']}, {env['date']})", ""]
    for part in ("quantize", "attention", "temporal_module", "qkv_attention"):
        sel = [r for r in rows if r["part"] == part]
        if not sel:
            continue
        lines += [f"## {part}", "", "| shape | variant | ms | note |", "|---|---|---|---|"]
        for r in sel:
            shape = f"{r['M']}x{r['K']}" if part == "quantize" else f"{r.get('case', '')} {r.get('shape', '')}"
            note = r.get("error", "")
            if "exact" in r:
                note = "bit-exact" if r["exact"] else "NOT EXACT"
            if "max_abs_err_vs_ref" in r:
                note = f"max abs err vs reference {r['max_abs_err_vs_ref']:.1e}"
            if "rel_err_vs_current" in r:
                note = f"rel. err {r['rel_err_vs_current']:.2e}"
            ms = f"{r['ms']:.4f}" if "ms" in r else "–"
            lines.append(f"| {shape} | {r['variant']} | {ms} | {note} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("quantize", "attention", "qkv"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    env = environment()
    rows: list[dict] = []
    if args.only in (None, "quantize"):
        bench_quantize(rows)
    if args.only in (None, "attention"):
        bench_attention(rows)
    if args.only in (None, "qkv"):
        bench_qkv(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_parts.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    (args.out / "bench_parts.md").write_text(to_markdown(rows, env))
    print(to_markdown(rows, env))


if __name__ == "__main__":
    main()

"""Run every kernel against its reference on the GPU and write a log.

Usage (on the GPU machine, repo root)::

    python -m pallas_kernels.gpu_check --log benchmarks/results/kernel_check_gpu.log
    python -m pallas_kernels.gpu_check --only zp,epilogue,fp8 --log ...   # some groups (CHECK_GROUPS)
    python -m pallas_kernels.gpu_check --only tqe --log ...               # the rank-1 (TQE) branch
    python -m pallas_kernels.gpu_check --only qkv3 --log ...              # one qkv GEMM writing q, k, v

Each case draws fresh random inputs (never zeros; one zero row of x is planted to check the
zero-scale guard) and runs after the allocator was filled with NaN ("poisoned"), so output
elements a kernel forgets to write show up as mismatches.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from pallas_kernels._compat import gpu_name
from pallas_kernels.testing import rand_int, rand_scale, rand_x

SHAPES_KN = [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152), (1152, 2304)]
MS = [1, 7, 130, 240, 600, 2048]


def poison_allocator(nbytes: int = 1 << 28) -> None:
    """Fill a large block with NaN and free it so the next outputs reuse poisoned memory."""
    buf = jnp.full((nbytes // 4,), jnp.nan, jnp.float32)
    buf.block_until_ready()
    del buf


def rand_case(seed: int, m: int, k: int, n: int, int4: bool = False):
    x = rand_x(seed, m, k, zero_row=m // 2 if m > 3 else None)
    wq = rand_int(seed + 1, (n, k), -8, 7) if int4 else rand_int(seed + 1, (n, k), -127, 127)
    ws = rand_scale(seed + 2, (n,))
    bias = jax.random.normal(jax.random.key(seed + 3), (n,), jnp.float32)
    return x, wq, ws, bias, jax.random.key(seed + 4)


def close(y: jax.Array, ref: jax.Array) -> tuple[bool, float]:
    y = np.asarray(y, np.float32)
    r = np.asarray(ref, np.float32)
    if not np.all(np.isfinite(y)):
        return False, float("nan")
    rel = float(np.linalg.norm(y - r) / max(np.linalg.norm(r), 1e-30))
    ok = rel < 5e-3 and bool(np.allclose(y, r, rtol=2e-2, atol=2e-2 * max(np.abs(r).max(), 1e-6)))
    return ok, rel


# quantized attention at the model shapes: (B, Nq, Nk, H, D, key mask)
QUANT_ATTENTION_SHAPES = [
    (2, 4096, 4096, 16, 72, False),  # PixArt-XL 1024 px self-attention (CFG batch)
    (2, 4096, 120, 16, 72, True),  # PixArt cross-attention to 120 caption tokens, padding masked
    (32, 1024, 1024, 16, 72, False),  # STDiT-XL 16x512 spatial attention (B·T = 32)
    (2, 3600, 3600, 16, 72, False),  # STDiT3 720p spatial length (not a multiple of the tiles)
    (2, 1024, 1024, 8, 64, False),
    (2, 1024, 1024, 8, 128, False),
]
def check_splits(report, op: str, tag: str, args: tuple, **kw) -> None:
    """``op(*args, splits=3)`` (q, k, v as three GEMMs on one quantized x) on the kernel backends vs the
    column blocks of the reference."""
    ref = getattr(pk, f"{op}_ref")(*args, **kw)
    for be in ("mosaic",) if op.startswith("fp8") else ("mosaic", "triton"):  # Triton FP8: refused on a GPU
        name = f"{op}[{be}] {tag}"
        try:
            poison_allocator()
            parts = getattr(pk, op)(*args, backend=be, splits=3, **kw)
            ok, rel = close(jnp.concatenate(parts, -1), ref)
            report(name, ok, f"rel={rel:.2e}")
        except Exception as e:  # noqa: BLE001
            report(name, False, repr(e)[:300])


def check_op(report, name: str, op: str, args: tuple, ref: jax.Array, **kw) -> None:
    """``pk.<op>(*args, **kw)`` on a poisoned allocator vs ``ref`` (:func:`close`, same dtype), reported as
    ``name``; an exception is a failure (its repr reported)."""
    try:
        poison_allocator()
        y = getattr(pk, op)(*args, **kw)
        ok, rel = close(y, ref)
        report(name, ok and y.dtype == ref.dtype, f"rel={rel:.2e}")
    except Exception as e:  # noqa: BLE001
        report(name, False, repr(e)[:300])


def check_zero_points(report, quick: bool = False) -> None:
    """Asymmetric weights: the quantizers' int32 code sums (exactly those of their own codes) and the
    GEMM epilogue's zero-point term (int32, exact), then the linears with ``w_zero_point`` (rotation on
    and off, activation, splits, float32 output, W4A8 per channel) against their references."""
    base = np.where(np.random.default_rng(7).random((36, 36)) < 0.5, -1.0, 1.0)
    for k in (1152, 4608):
        signs = jnp.where(jax.random.bernoulli(jax.random.key(k + 7), 0.5, (k,)), 1.0, -1.0)
        for m in ((130,) if quick else (7, 130, 2048)):
            x = rand_x(k + m + 7, m, k, zero_row=m // 2)
            for name, fn in (("quantize_per_token[triton]", lambda: pk.quantize_per_token(x, backend="triton", row_sum=True)),
                             ("rotate_quantize[triton]", lambda: pk.rotate_quantize(x, base, signs, backend="triton", row_sum=True))):
                name = f"{name} row_sum M={m} K={k}"
                try:
                    poison_allocator()
                    q, _, rs = fn()
                    ok = rs.dtype == jnp.int32 and bool(jnp.array_equal(rs, jnp.sum(q.astype(jnp.int32), -1, keepdims=True)))
                    report(name, ok, "exact" if ok else "MISMATCH")
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])
    for k, n in ((1152, 1152), (4608, 1152)) if quick else ((1152, 3456), (1152, 1152), (4608, 1152)):
        for m in ((600,) if quick else (7, 2048)):
            seed = 5000 + k + n + m
            x, wq, ws, bias, _ = rand_case(seed, m, k, n)
            wq = rand_int(seed + 9, (n, k), -128, 127)
            zw = rand_int(seed + 10, (n,), -127, 127).astype(jnp.int32)
            xq, xs, rs = pk.quantize_per_token(x, row_sum=True)
            exact = pk.zero_point_ref(pk.int8_matmul_ref(xq, wq), zw, rs).astype(jnp.float32)
            for be in ("mosaic", "triton"):
                name = f"int8_gemm[{be}] zero-point term M={m} K={k} N={n}"
                try:
                    poison_allocator()
                    y = pk.int8_gemm(xq, wq, jnp.ones((m, 1)), jnp.ones((n,)), out_dtype=jnp.float32, backend=be,
                                     w_zero=zw, x_row_sum=rs)
                    ok = bool(jnp.array_equal(y, exact))
                    report(name, ok, "exact" if ok else f"max|d|={float(jnp.max(jnp.abs(y - exact)))}")
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])
            w4 = pk.pack_int4(rand_int(seed + 11, (n, k), -8, 7))
            z4 = rand_int(seed + 12, (n,), -7, 8).astype(jnp.int32)
            sign_k = jnp.where(jax.random.bernoulli(jax.random.key(seed), 0.5, (k,)), 1.0, -1.0)
            from pallas_kernels.ops.rotate_quantize import rotate_ref

            xrot = rotate_ref(x, base, sign_k)
            cases = [
                ("w8a8_linear", "", wq, zw, {}, x),
                ("w8a8_linear", "gelu_tanh", wq, zw, {"activation": "gelu_tanh"}, x),
                ("w8a8_linear", "f32-out", wq, zw, {"out_dtype": jnp.float32}, x),
                ("w8a8_linear", "rotation", wq, zw, {"rotation": (base, sign_k)}, xrot),
                ("w4a8_linear", "", w4, z4, {}, x),
                ("w4a8_linear", "rotation", w4, z4, {"rotation": (base, sign_k)}, xrot),
            ]
            for op, tag, w, z, kw, xref in cases:
                ref_kw = {key: v for key, v in kw.items() if key != "rotation"}
                ref = getattr(pk, f"{op}_ref")(xref, w, ws, bias, w_zero_point=z, **ref_kw)
                for be in ("mosaic", "triton", "xla"):
                    check_op(report, f"{op}[{be}] w_zero_point {tag} M={m} K={k} N={n}", op, (x, w, ws, bias), ref,
                             backend=be, w_zero_point=z, **kw)
            if n % 3 == 0:
                check_splits(report, "w8a8_linear", f"w_zero_point splits=3 M={m} K={k} N={n}",
                             (x, wq, ws, bias), w_zero_point=zw)


def check_group_act(report, quick: bool = False) -> None:
    """Q-DiT's group GEMM (``pk.group_gemm``): activations quantized per token and group x per-group packed int4
    or int8 weights, both sides asymmetric, every Q-DiT group size {32, 64, 128, 192, 288}, at DiT-XL's
    K = 1152 / 4608: unit scales give the int32 group sums (exact), random scales the float result
    (float32 output, 1e-5 relative)."""
    rng = np.random.default_rng(15)
    for k in (1152,) if quick else (1152, 4608):
        n = 1152
        for gs in (32, 64, 128, 192, 288):
            g = k // gs
            for packed in (True, False):
                for m in ((600,) if quick or gs != 128 else (7, 600, 2048)):
                    w = rng.integers(-8, 8, (n, k)) if packed else rng.integers(-128, 128, (n, k))
                    w = pk.pack_int4(jnp.asarray(w, jnp.int8)) if packed else jnp.asarray(w, jnp.int8)
                    c = dict(xq=jnp.asarray(rng.integers(-128, 128, (m, k)), jnp.int8),
                             x_scale=jnp.asarray(rng.uniform(1e-3, 1e-2, (m, g)), jnp.float32), w=w,
                             w_scale=jnp.asarray(rng.uniform(1e-3, 1e-2, (n, g)), jnp.float32),
                             bias=jnp.asarray(rng.normal(size=n), jnp.float32),
                             x_zero=jnp.asarray(rng.integers(-127, 129, (m, g)), jnp.int32),
                             w_zero=jnp.asarray(rng.integers(-7, 9, (n, g)), jnp.int32))
                    ones = dict(c, x_scale=jnp.ones_like(c["x_scale"]), w_scale=jnp.ones_like(c["w_scale"]), bias=None)
                    name = f"group_gemm[triton] {'int4' if packed else 'int8'} group={gs} M={m} K={k} N={n}"
                    try:
                        poison_allocator()
                        y = pk.group_gemm(**ones, backend="triton", out_dtype=jnp.float32)
                        d = float(jnp.max(jnp.abs(y - pk.group_gemm_ref(**ones))))
                        y = pk.group_gemm(**c, backend="triton", out_dtype=jnp.float32)
                        ref = pk.group_gemm_ref(**c)
                        rel = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
                        report(name, d == 0 and rel < 1e-5 and bool(jnp.all(jnp.isfinite(y))),
                               f"int32 max|d|={d:g} rel={rel:.2e}")
                    except Exception as e:  # noqa: BLE001
                        report(name, False, repr(e)[:300])


def check_fp8(report, quick: bool = False) -> None:
    """FP8 (e4m3) W8A8: the e4m3 quantizers (plain: exact; rotated: rare neighbour flips), the GEMM on
    e4m3 operands (Mosaic GPU wgmma, Pallas-Triton) against XLA's FP8 dot, and the linear with its fused
    epilogue (activation, rotation, splits, gated residual, float32 output) against its reference."""
    from pallas_kernels.ops.int8_matmul.reference import gemm_ref
    from pallas_kernels.ops.rotate_quantize import rotate_ref

    base = np.where(np.random.default_rng(8).random((36, 36)) < 0.5, -1.0, 1.0)
    for k in (1152, 4608):
        signs = jnp.where(jax.random.bernoulli(jax.random.key(k + 8), 0.5, (k,)), 1.0, -1.0)
        for m in ((2048,) if quick else (7, 2048)):
            x = rand_x(k + m + 8, m, k, zero_row=m // 2)
            for name, fn, ref_fn, exact in (
                ("quantize_per_token[triton]", lambda: pk.quantize_per_token(x, backend="triton", dtype=pk.FP8),
                 lambda: pk.quantize_per_token_ref(x, dtype=pk.FP8), True),
                ("rotate_quantize[triton]", lambda: pk.rotate_quantize(x, base, signs, backend="triton", dtype=pk.FP8),
                 lambda: pk.rotate_quantize_ref(x, base, signs, dtype=pk.FP8), False)):
                name = f"{name} e4m3 M={m} K={k}"
                try:
                    poison_allocator()
                    (q, sc), (qr, sr) = fn(), ref_fn()
                    a, b = np.asarray(q, np.float32), np.asarray(qr, np.float32)
                    d = np.abs(a - b)
                    flips = int((d > 0).sum())
                    step_ok = bool(np.all(d <= np.maximum(np.abs(a), np.abs(b)) * 2.0**-3 + 2.0**-9))
                    srel = float(np.max(np.abs(np.asarray(sc) / np.asarray(sr) - 1)))
                    ok = q.dtype == pk.FP8 and step_ok and srel < 1e-6 and (
                        flips == 0 if exact else flips <= 2 + 1e-4 * d.size)
                    report(name, ok, f"flips={flips}/{d.size} max_rel_scale={srel:.1e}")
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])
    for k, n in ((1152, 1152), (4608, 1152)) if quick else ((1152, 3456), (1152, 1152), (4608, 1152)):
        for m in ((2048,) if quick else (7, 8192)):
            seed = 9000 + k + n + m
            x, _, _, bias, _ = rand_case(seed, m, k, n)
            wq, ws = pk.quantize_fp8_weight_ref(jax.random.normal(jax.random.key(seed), (n, k)) * 0.05)
            xq, xs = pk.quantize_per_token_ref(x, dtype=pk.FP8)
            acc_ref = gemm_ref(xq, wq)
            for be in ("mosaic",):  # FP8 on Pallas-Triton is refused on a GPU (inaccurate: int8_matmul dispatch)
                name = f"fp8_gemm[{be}] M={m} K={k} N={n}"
                try:
                    poison_allocator()
                    acc = pk.fp8_gemm(xq, wq, backend=be)
                    ok, rel = close(acc, acc_ref)
                    report(name, ok and acc.dtype == jnp.float32, f"rel={rel:.2e}")
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])
            sign_k = jnp.where(jax.random.bernoulli(jax.random.key(seed + 1), 0.5, (k,)), 1.0, -1.0)
            groups = 2 if m % 2 == 0 else 1
            extras = {"residual": rand_x(seed + 2, m, n),
                      "gate": jax.random.normal(jax.random.key(seed + 3), (groups, n), jnp.float32)}
            cases = [("", {}, x), ("gelu_tanh", {"activation": "gelu_tanh"}, x),
                     ("f32-out", {"out_dtype": jnp.float32}, x),
                     ("rotation", {"rotation": (base, sign_k)}, rotate_ref(x, base, sign_k)),
                     ("residual+gate", extras, x)]
            for tag, kw, xref in cases:
                ref = pk.fp8_linear_ref(xref, wq, ws, bias, **{a: v for a, v in kw.items() if a != "rotation"})
                for be in ("mosaic", "xla"):  # (Pallas-Triton FP8 is refused on a GPU: see int8_matmul)
                    name = f"fp8_linear[{be}] {tag} M={m} K={k} N={n}"
                    try:
                        poison_allocator()
                        y = pk.fp8_linear(x, wq, ws, bias, backend=be, **kw)
                        ok, rel = close(y, ref)
                        # the zero row (scale 1, codes 0) gives exactly the bias, never NaN
                        zero_ok = m <= 3 or tag not in ("", "f32-out") or bool(
                            jnp.all(y[m // 2] == bias.astype(y.dtype)))
                        report(name, ok and zero_ok and y.dtype == ref.dtype, f"rel={rel:.2e} zero_row_ok={zero_ok}")
                    except Exception as e:  # noqa: BLE001
                        report(name, False, repr(e)[:300])
            if n % 3 == 0:
                check_splits(report, "fp8_linear", f"splits=3 M={m} K={k} N={n}", (x, wq, ws, bias))


def check_epilogue(report, quick: bool = False) -> None:
    """``residual + gate · y`` in the GEMM epilogue (proj / fc2 of the DiT blocks): gate rows of whole
    tiles (fused) and of partial tiles (applied after the kernel), with and without zero points."""
    for k, n in ((1152, 1152),) if quick else ((1152, 1152), (4608, 1152)):
        for m, groups in ((2048, 2), (600, 2)) if quick else ((2048, 2), (8192, 2), (600, 2), (1024, 1)):
            seed = 7000 + k + m + groups
            x, wq, ws, bias, _ = rand_case(seed, m, k, n)
            zw = rand_int(seed + 9, (n,), -127, 127).astype(jnp.int32)
            res = rand_x(seed + 10, m, n)
            gate = jax.random.normal(jax.random.key(seed + 11), (groups, n), jnp.float32).astype(jnp.bfloat16)
            w4 = pk.pack_int4(rand_int(seed + 12, (n, k), -8, 7))
            for op, w, z in (("w8a8_linear", wq, None), ("w8a8_linear", wq, zw), ("w4a8_linear", w4, None)):
                for extras in ({"residual": res, "gate": gate}, {"residual": res}):
                    ref = getattr(pk, f"{op}_ref")(x, w, ws, bias, w_zero_point=z, **extras)
                    for be in ("mosaic", "triton"):
                        name = (f"{op}[{be}] {'+'.join(extras)} zp={z is not None} G={groups if 'gate' in extras else '-'} "
                                f"M={m} K={k} N={n}")
                        try:
                            poison_allocator()
                            y = getattr(pk, op)(x, w, ws, bias, backend=be, w_zero_point=z, **extras)
                            ok, rel = close(y, ref)
                            report(name, ok, f"rel={rel:.2e}")
                        except Exception as e:  # noqa: BLE001
                            report(name, False, repr(e)[:300])


def quant_attention_inputs(seed: int, b: int, nq: int, nk: int, h: int, d: int, masked: bool):
    """Fresh random bf16 q, k (a per-channel key offset: what K smoothing removes), v and a key mask."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray((rng.standard_normal((b, nq, h, d)) + rng.standard_normal((1, 1, h, d))).astype(np.float32),
                    jnp.bfloat16)
    k = jnp.asarray((rng.standard_normal((b, nk, h, d)) + 2 * rng.standard_normal((1, 1, h, d))).astype(np.float32),
                    jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((b, nk, h, d)).astype(np.float32), jnp.bfloat16)
    mask = jnp.asarray(np.arange(nk)[None, :] < np.array([[nk // 2], [nk - 7]])[:b]) if masked else None
    return q, k, v, mask


# the quantized-attention reference, jitted once for both attention groups
_attention_ref = jax.jit(pk.quant_attention_ref, static_argnames=("pv", "q_block", "k_block", "kv_block", "smooth_q",
                                                                  "q_mean_block"))


def report_attention(report, name: str, y: jax.Array, ref: jax.Array, q: jax.Array, exact: np.ndarray) -> None:
    """One quantized-attention row: the kernel ``y`` vs its reference (``close``) and its cosine vs the
    float attention ``exact`` (flattened float64)."""
    ok, rel = close(y, ref)
    yf = np.asarray(y, np.float64).ravel()
    cos = float(yf @ exact / (np.linalg.norm(yf) * np.linalg.norm(exact)))
    report(name, ok and y.shape == q.shape, f"rel={rel:.2e} cos_vs_float={cos:.6f}")


def check_quant_attention_mosaic(report, quick: bool = False) -> None:
    """``mosaic_quant_attention`` (what ``backend="mosaic"`` runs: the warp-specialized kernel, bf16 ``P·V``) vs its reference
    (``kv_block`` = ``block_kv``, ``q_mean_block`` = ``2 * block_q``) on fresh random inputs at the model shapes,
    with and without Q smoothing, and its tiling alternatives at the PixArt shape."""
    from pallas_kernels.ops.quant_attention import MosaicAttentionConfig, float_attention, mosaic_quant_attention

    base = MosaicAttentionConfig()
    variants = [base, MosaicAttentionConfig(qk_pad=128), MosaicAttentionConfig(block_kv=64, stages=4),
                MosaicAttentionConfig(stages=3), MosaicAttentionConfig(block_kv=256)]
    shapes = QUANT_ATTENTION_SHAPES[:3:2] if quick else QUANT_ATTENTION_SHAPES
    for i, (b, nq, nk, h, d, masked) in enumerate(shapes):
        q, k, v, mask = quant_attention_inputs(3000 + i, b, nq, nk, h, d, masked)
        exact = np.asarray(float_attention(q, k, v, mask), np.float64).ravel()
        for smooth_q in (True, False):
            for cfg in (variants if i == 0 and not quick and smooth_q else variants[:1]):
                name = (f"quant_attention[mosaic,bf16{'' if smooth_q else ',no-q-smoothing'}] "
                        f"(B,Nq,Nk,H,D)={(b, nq, nk, h, d)} mask={masked} {cfg}")
                try:
                    poison_allocator()
                    y = mosaic_quant_attention(q, k, v, mask, smooth_q=smooth_q, cfg=cfg)  # no silent fallback
                    ref = _attention_ref(q, k, v, mask, pv="bf16", kv_block=cfg.block_kv, smooth_q=smooth_q,
                                         q_mean_block=cfg.q_mean_block)
                    report_attention(report, name, y, ref, q, exact)
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])


def check_quant_attention(report, quick: bool = False) -> None:
    """``quant_attention`` (Pallas-Triton) vs its reference (``kv_block`` = the kernel's ``block_n``) on fresh
    random inputs (K with a per-channel offset); the layout / tiling variants at the PixArt shape."""
    from pallas_kernels.ops.quant_attention import QuantAttentionConfig, attention_config, float_attention

    variants = [None, QuantAttentionConfig(head_split="pad", fuse_q=False), QuantAttentionConfig(v_layout="nd"),
                QuantAttentionConfig(block_m=64), QuantAttentionConfig(block_n=128, num_warps=8)]
    shapes = QUANT_ATTENTION_SHAPES[:3:2] if quick else QUANT_ATTENTION_SHAPES
    for i, (b, nq, nk, h, d, masked) in enumerate(shapes):
        q, k, v, mask = quant_attention_inputs(2000 + i, b, nq, nk, h, d, masked)
        exact = None
        for pv, smooth_q in (("fp8", True), ("bf16", True), ("bf16", False)):
            for cfg in (variants if i == 0 and not quick and smooth_q else variants[:1]):
                tiling = cfg or attention_config(nq, d, nk)
                name = (f"quant_attention[triton,{pv}{'' if smooth_q else ',no-q-smoothing'}] "
                        f"(B,Nq,Nk,H,D)={(b, nq, nk, h, d)} mask={masked} {tiling}")
                try:
                    poison_allocator()
                    y = pk.quant_attention(q, k, v, mask, pv=pv, smooth_q=smooth_q, config=cfg, backend="triton")
                    if exact is None:
                        exact = np.asarray(float_attention(q, k, v, mask), np.float64).ravel()
                    ref = _attention_ref(q, k, v, mask, pv=pv, kv_block=tiling.block_n, smooth_q=smooth_q,
                                         q_mean_block=tiling.block_m)
                    report_attention(report, name, y, ref, q, exact)
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])


def check_tqe(report, quick: bool = False) -> None:
    """Q-VDiT's rank-1 TQE branch in the kernels: the quantizer's ``u = u_scale · s · (q · alpha)`` (codes and
    scales exactly the plain quantizer's, ``u`` to float32 summation order), the GEMM epilogue term
    ``u ⊗ beta`` with zero points, GELU and the gated residual (Mosaic GPU, Pallas-Triton), and the linears
    with ``rank1=`` (W8A8 plain / rotated / splits, W4A8 per channel with zero points and per group)."""
    from pallas_kernels.ops.rotate_quantize import rotate_ref

    base = np.where(np.random.default_rng(16).random((36, 36)) < 0.5, -1.0, 1.0)
    for k in (1152, 4608):
        for m in ((2048,) if quick else (7, 2048)):
            x = rand_x(k + m + 16, m, k, zero_row=m // 2)
            alpha = jax.random.normal(jax.random.key(k + 1), (k,), jnp.float32) / np.sqrt(k)
            u_scale = jax.random.uniform(jax.random.key(k + 2), (m,), jnp.float32, 0.5, 2.0)
            name = f"quantize_per_token[triton] alpha M={m} K={k}"
            try:
                poison_allocator()
                q, s, rs, u = pk.quantize_per_token(x, backend="triton", row_sum=True, alpha=alpha, u_scale=u_scale)
                qr, sr, rsr, ur = pk.quantize_per_token_ref(x, row_sum=True, alpha=alpha, u_scale=u_scale)
                same = all(bool(jnp.array_equal(a, b)) for a, b in ((q, qr), (s, sr), (rs, rsr)))
                # float32 sums in another order: relative to the sum of |terms|
                mag = u_scale[:, None] * s * (jnp.abs(q.astype(jnp.float32)) @ jnp.abs(alpha))[:, None]
                err = float(jnp.max(jnp.abs(u - ur) / jnp.maximum(mag, 1e-30)))
                report(name, same and err < 2e-5 and u.dtype == jnp.float32, f"codes_exact={same} u_err={err:.1e}")
            except Exception as e:  # noqa: BLE001
                report(name, False, repr(e)[:300])
    for k, n in ((1152, 1152),) if quick else ((1152, 3456), (1152, 1152), (4608, 1152)):
        for m in ((2048,) if quick else (7, 2048)):
            seed = 11000 + k + n + m
            x, wq, ws, bias, _ = rand_case(seed, m, k, n)
            zw = rand_int(seed + 9, (n,), -127, 127).astype(jnp.int32)
            alpha = jax.random.normal(jax.random.key(seed + 1), (k,), jnp.float32) / np.sqrt(k)
            beta = jax.random.normal(jax.random.key(seed + 2), (n,), jnp.float32)
            u_scale = jax.random.uniform(jax.random.key(seed + 3), (m,), jnp.float32, 0.5, 2.0)
            groups = 2 if m % 2 == 0 else 1
            res = {"residual": rand_x(seed + 4, m, n),
                   "gate": jax.random.normal(jax.random.key(seed + 5), (groups, n), jnp.float32)}
            xq, xs, rs, u = pk.quantize_per_token(x, row_sum=True, alpha=alpha, u_scale=u_scale)
            gemm_kw = dict(w_zero=zw, x_row_sum=rs, rank1=(u, beta), activation="gelu_tanh", **res)
            ref = pk.scaled_epilogue_ref(pk.int8_matmul_ref(xq, wq), xs, ws, bias, jnp.bfloat16, **gemm_kw)
            for be in ("mosaic", "triton"):
                check_op(report, f"int8_gemm[{be}] rank1+zp+gelu+residual+gate M={m} K={k} N={n}", "int8_gemm",
                         (xq, wq, xs, ws, bias), ref, out_dtype=jnp.bfloat16, backend=be, **gemm_kw)
            w4 = pk.pack_int4(rand_int(seed + 6, (n, k), -8, 7))
            z4 = rand_int(seed + 7, (n,), -7, 8).astype(jnp.int32)
            sign_k = jnp.where(jax.random.bernoulli(jax.random.key(seed + 8), 0.5, (k,)), 1.0, -1.0)
            r1 = (alpha, beta, u_scale)
            cases = [
                ("w8a8_linear", "zp+res+gate", wq, ws, {"w_zero_point": zw, **res}, x),
                ("w8a8_linear", "gelu f32-out", wq, ws, {"activation": "gelu_tanh", "out_dtype": jnp.float32}, x),
                ("w8a8_linear", "rotation+zp", wq, ws, {"rotation": (base, sign_k), "w_zero_point": zw}, None),
                ("w4a8_linear", "zp+res+gate", w4, ws, {"w_zero_point": z4, **res}, x),
                ("w4a8_linear", "group=128", w4, rand_scale(seed + 10, (n, k // 128)), {}, x),
            ]
            for op, tag, w, wsc, kw, xref in cases:
                if xref is None:
                    xref = rotate_ref(x, base, sign_k)
                ref = getattr(pk, f"{op}_ref")(xref, w, wsc, bias, rank1=r1,
                                               **{a: v for a, v in kw.items() if a != "rotation"})
                for be in ("mosaic", "triton", "xla"):
                    check_op(report, f"{op}[{be}] rank1 {tag} M={m} K={k} N={n}", op, (x, w, wsc, bias), ref,
                             backend=be, rank1=r1, **kw)
            if n % 3 == 0:
                check_splits(report, "w8a8_linear", f"rank1 splits=3 M={m} K={k} N={n}", (x, wq, ws, bias),
                             w_zero_point=zw, rank1=(alpha, beta))


def check_qkv3(report, quick: bool = False) -> None:
    """One qkv GEMM writing q, k, v as three arrays (``out_splits=3``) at the XL shape (K = 1152, N = 3·1152): the
    Mosaic GPU kernel called directly (no silent fallback) at the tiling the dispatch picks, on a poisoned
    allocator — int8 bare (int32, exact), int8 with and without zero point (+ GELU), e4m3 — against the column
    blocks of the one-GEMM reference; then ``w8a8_linear`` / ``fp8_linear(splits=3)`` through the dispatch."""
    from pallas_kernels.ops.int8_matmul import mosaic, mosaic_config
    from pallas_kernels.ops.int8_matmul.reference import gemm_ref

    k, n = 1152, 3456
    for m in ((8192,) if quick else (8192, 32768)):
        seed = 13000 + m
        x, wq, ws, bias, _ = rand_case(seed, m, k, n)
        wq = rand_int(seed + 9, (n, k), -128, 127)
        zw = rand_int(seed + 10, (n,), -127, 127).astype(jnp.int32)
        xq, xs, rs = pk.quantize_per_token(x, row_sum=True)
        w8, ws8 = pk.quantize_fp8_weight_ref(jax.random.normal(jax.random.key(seed), (n, k)) * 0.05)
        x8, xs8 = pk.quantize_per_token_ref(x, dtype=pk.FP8)
        cases = [("int8 int32", xq, wq, None, None, jnp.int32, {}),
                 ("int8", xq, wq, xs, ws, jnp.bfloat16, {}),
                 ("int8 zp+gelu", xq, wq, xs, ws * 30, jnp.bfloat16,
                  {"w_zero": zw, "x_row_sum": rs, "activation": "gelu_tanh"}),
                 ("int8 zp f32-out", xq, wq, xs, ws, jnp.float32, {"w_zero": zw, "x_row_sum": rs}),
                 ("e4m3", x8, w8, xs8, ws8, jnp.bfloat16, {}),
                 ("e4m3 gelu", x8, w8, xs8, ws8 * 30, jnp.bfloat16, {"activation": "gelu_tanh"})]
        for tag, a, w, sa, sw, out_dtype, kw in cases:
            scaled = sa is not None
            cfg = mosaic_config(m, k, n, "mosaic_gemm_scaled" if scaled else "mosaic_gemm_int32",
                                jnp.dtype(out_dtype).itemsize, out_splits=3)
            name = f"qkv3 mosaic_int8_gemm out_splits=3 {tag} M={m} K={k} N={n} {cfg}"
            try:
                acc = gemm_ref(a, w)
                ref = acc if not scaled else pk.scaled_epilogue_ref(acc, sa, sw, bias, out_dtype, **kw)
                poison_allocator()
                parts = mosaic.mosaic_int8_gemm(a, w, sa, sw, bias if scaled else None, cfg=cfg, out_dtype=out_dtype,
                                                out_splits=3, **kw)
                shapes_ok = [(p.shape, p.dtype) for p in parts] == [((m, n // 3), jnp.dtype(out_dtype))] * 3
                y = jnp.concatenate(parts, axis=-1)
                if scaled:
                    ok, rel = close(y, ref)
                    report(name, ok and shapes_ok, f"rel={rel:.2e}")
                else:
                    ok = bool(jnp.array_equal(y, ref))
                    report(name, ok and shapes_ok, "exact" if ok else "MISMATCH")
            except Exception as e:  # noqa: BLE001
                report(name, False, repr(e)[:300])
        check_splits(report, "w8a8_linear", f"qkv3 M={m} K={k} N={n}", (x, wq, ws, bias))
        check_splits(report, "w8a8_linear", f"qkv3 w_zero_point+gelu M={m} K={k} N={n}", (x, wq, ws * 30, bias),
                     w_zero_point=zw, activation="gelu_tanh")
        check_splits(report, "fp8_linear", f"qkv3 M={m} K={k} N={n}", (x, w8, ws8, bias))


# --only groups: each a check function, in the order they run; "others": the linears of run_checks' own loops
NAMED_CHECKS = {"zp": check_zero_points, "epilogue": check_epilogue, "fp8": check_fp8,
                "quant_attention": check_quant_attention, "quant_attention_mosaic": check_quant_attention_mosaic,
                "group_act": check_group_act, "tqe": check_tqe, "qkv3": check_qkv3}
CHECK_GROUPS = (*NAMED_CHECKS, "others")


def run_checks(log, quick: bool = False, only: tuple[str, ...] | None = None) -> int:
    failures = 0
    shapes_kn = SHAPES_KN[::3] if quick else SHAPES_KN
    ms = MS[1::2] if quick else MS
    seed = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", file=log, flush=True)

    for name, check in NAMED_CHECKS.items():
        if only is None or name in only:
            check(report, quick)
    if only is not None and "others" not in only:
        return failures
    for k, n in shapes_kn:
        for m in ms:
            seed += 1
            x, wq, ws, bias, _ = rand_case(seed, m, k, n)
            xq, xs = pk.quantize_per_token(x)
            qt, st = pk.quantize_per_token(x, backend="triton")
            dq = int(jnp.max(jnp.abs(qt.astype(jnp.int32) - xq.astype(jnp.int32))))
            report(f"quantize_per_token[triton] M={m} K={k}",
                   dq <= 1 and bool(jnp.allclose(st, xs, rtol=1e-6)), f"max|dq|={dq}")
            ref_i32 = pk.int8_matmul_ref(xq, wq)
            for be in ("mosaic", "triton"):
                try:
                    poison_allocator()
                    y = pk.int8_matmul(xq, wq, backend=be)
                    ok = bool(jnp.array_equal(y, ref_i32)) and y.dtype == jnp.int32
                    report(f"int8_matmul[{be}] M={m} K={k} N={n}", ok,
                           "exact" if ok else "MISMATCH")
                except Exception as e:  # noqa: BLE001 - report and continue
                    report(f"int8_matmul[{be}] M={m} K={k} N={n}", False, repr(e)[:300])
            ref = pk.w8a8_linear_ref(x, wq, ws, bias)
            for be in ("mosaic", "triton", "xla"):
                for b in (bias, None):
                    try:
                        poison_allocator()
                        y = pk.w8a8_linear(x, wq, ws, b, backend=be)
                        r = ref if b is not None else pk.w8a8_linear_ref(x, wq, ws, None)
                        ok, rel = close(y, r)
                        expect = (b if b is not None else jnp.zeros((n,))).astype(y.dtype)
                        zero_ok = m <= 3 or bool(jnp.all(y[m // 2] == expect))
                        report(f"w8a8_linear[{be}] bias={b is not None} M={m} K={k} N={n}",
                               ok and zero_ok, f"rel={rel:.2e} zero_row_ok={zero_ok}")
                    except Exception as e:  # noqa: BLE001
                        report(f"w8a8_linear[{be}] M={m} K={k} N={n}", False, repr(e)[:300])
                # GELU fused into the epilogue (fc1), scales raised so outputs reach both tails
                try:
                    poison_allocator()
                    wsg = ws * 30.0
                    y = pk.w8a8_linear(x, wq, wsg, bias, backend=be, activation="gelu_tanh")
                    ok, rel = close(y, pk.w8a8_linear_ref(x, wq, wsg, bias, activation="gelu_tanh"))
                    report(f"w8a8_linear[{be}] gelu_tanh M={m} K={k} N={n}", ok, f"rel={rel:.2e}")
                except Exception as e:  # noqa: BLE001
                    report(f"w8a8_linear[{be}] gelu_tanh M={m} K={k} N={n}", False, repr(e)[:300])
                try:  # float32 output (asymmetric-weight records): twice the output staging SMEM
                    poison_allocator()
                    y = pk.w8a8_linear(x, wq, ws, bias, backend=be, out_dtype=jnp.float32)
                    ok, rel = close(y, pk.w8a8_linear_ref(x, wq, ws, bias, out_dtype=jnp.float32))
                    report(f"w8a8_linear[{be}] f32-out M={m} K={k} N={n}", ok and y.dtype == jnp.float32,
                           f"rel={rel:.2e}")
                except Exception as e:  # noqa: BLE001
                    report(f"w8a8_linear[{be}] f32-out M={m} K={k} N={n}", False, repr(e)[:300])
                if n % 3 == 0:  # fused qkv computed as three GEMMs on one quantized x
                    try:
                        poison_allocator()
                        parts = pk.w8a8_linear(x, wq, ws, bias, backend=be, splits=3)
                        ok, rel = close(jnp.concatenate(parts, axis=-1), ref)
                        report(f"w8a8_linear[{be}] splits=3 M={m} K={k} N={n}", ok, f"rel={rel:.2e}")
                    except Exception as e:  # noqa: BLE001
                        report(f"w8a8_linear[{be}] splits=3 M={m} K={k} N={n}", False, repr(e)[:300])
            # W4A8, per channel and per group of 128.
            x, w4, ws, bias, kg = rand_case(seed + 1000, m, k, n, int4=True)
            packed = pk.pack_int4(w4)
            wsg = jax.random.uniform(kg, (n, k // 128), jnp.float32, 1e-3, 1e-2)
            for scales, tag in ((ws, "channel"), (wsg, "group128")):
                ref = pk.w4a8_linear_ref(x, packed, scales, bias)
                for be in ("mosaic", "triton", "xla"):
                    try:
                        poison_allocator()
                        y = pk.w4a8_linear(x, packed, scales, bias, backend=be)
                        ok, rel = close(y, ref)
                        report(f"w4a8_linear[{be},{tag}] M={m} K={k} N={n}", ok, f"rel={rel:.2e}")
                    except Exception as e:  # noqa: BLE001
                        report(f"w4a8_linear[{be},{tag}] M={m} K={k} N={n}", False, repr(e)[:300])
    # Producer (XLA-fused) vs reference computed in float32 on the CPU-equivalent path.
    ks = jax.random.split(jax.random.key(99), 4)
    x = jax.random.normal(ks[0], (2, 300, 1152), jnp.bfloat16)
    sh = jax.random.normal(ks[1], (2, 1, 1152)) * 0.1
    sc = jax.random.normal(ks[2], (2, 1, 1152)) * 0.1
    sm = jax.random.uniform(ks[3], (1152,), minval=0.5, maxval=2.0)
    qr, sr = pk.fused_quantize_producer_ref(x, sh, sc, sm)
    for be in ("xla", "triton"):
        try:
            poison_allocator()
            q, s = pk.fused_quantize_producer(x, sh, sc, sm, backend=be)
            diff = int(jnp.max(jnp.abs(q.astype(jnp.int32) - qr.astype(jnp.int32))))
            srel = float(jnp.max(jnp.abs(s / sr - 1)))
            report(f"producer[{be}] (2,300,1152)", diff <= 1 and srel < 1e-4,
                   f"max|dq|={diff} max_rel_scale={srel:.1e}")
        except Exception as e:  # noqa: BLE001
            report(f"producer[{be}] (2,300,1152)", False, repr(e)[:300])
    # Attention across frames: kernel vs the reference (same bf16 rounding points), odd T and D = 72.
    for b, t, s_, h, d in ((2, 16, 1024, 16, 72), (1, 15, 64, 4, 72), (2, 8, 40, 2, 64)):
        ks = jax.random.split(jax.random.key(1000 + t), 3)
        q, k, v = (jax.random.normal(kk, (b, t, s_, h, d), jnp.bfloat16) * 2 for kk in ks)
        name = f"frame_attention[triton] (B,T,S,H,D)={(b, t, s_, h, d)}"
        try:
            poison_allocator()
            y = pk.frame_attention(q, k, v, backend="triton")
            ok, rel = close(y, pk.frame_attention_ref(q, k, v))
            report(name, ok and y.shape == q.shape, f"rel={rel:.2e}")
        except Exception as e:  # noqa: BLE001
            report(name, False, repr(e)[:300])
    # Smoothing + randomized Hadamard + per-token int8: kernel vs the float32 reference (another
    # summation order: rare ±1 flips allowed, at most 2 + 1e-4 of the values); any ±1 base will do.
    for k in (1152, 4608):
        base = np.where(np.random.default_rng(k).random((36, 36)) < 0.5, -1.0, 1.0)
        ks = jax.random.split(jax.random.key(k), 2)
        signs = jnp.where(jax.random.bernoulli(ks[0], 0.5, (k,)), 1.0, -1.0)
        smooth = jax.random.uniform(ks[1], (k,), minval=0.3, maxval=3.0)
        for m in (7, 2048):
            x = rand_x(k + m, m, k, zero_row=m // 2)
            for sm in (None, smooth):
                name = f"rotate_quantize[triton] smooth={sm is not None} M={m} K={k}"
                try:
                    poison_allocator()
                    q, s = pk.rotate_quantize(x, base, signs, sm, backend="triton")
                    qr, sr = pk.rotate_quantize_ref(x, base, signs, sm)
                    d = np.abs(np.asarray(q, np.int32) - np.asarray(qr, np.int32))
                    srel = float(np.max(np.abs(np.asarray(s) / np.asarray(sr) - 1)))
                    flips = int((d > 0).sum())
                    report(name, d.max() <= 1 and flips <= 2 + 1e-4 * d.size and srel < 1e-6,
                           f"max|dq|={d.max()} flips={flips}/{d.size} max_rel_scale={srel:.1e}")
                except Exception as e:  # noqa: BLE001
                    report(name, False, repr(e)[:300])
        # the rotation inside the W8A8 / W4A8 linears (ViDiT-Q's online Hadamard, fused quantizer)
        n = 1152
        x = rand_x(k + 1, 2048, k, zero_row=1024)
        rot = (base, signs)
        wq = rand_int(k + 2, (n, k), -127, 127)
        w4 = rand_int(k + 3, (n, k), -8, 7)
        ws = rand_scale(k + 4, (n,))
        bias = jax.random.normal(jax.random.key(k + 5), (n,), jnp.float32)
        from pallas_kernels.ops.rotate_quantize import rotate_ref

        xrot = rotate_ref(x, base, signs)
        for op, w, ref in (("w8a8_linear", wq, pk.w8a8_linear_ref(xrot, wq, ws, bias)),
                           ("w4a8_linear", pk.pack_int4(w4), pk.w4a8_linear_ref(xrot, pk.pack_int4(w4), ws, bias))):
            name = f"{op}[auto] rotation M=2048 K={k} N={n}"
            try:
                poison_allocator()
                y = getattr(pk, op)(x, w, ws, bias, rotation=rot)
                ok, rel = close(y, ref)
                report(name, ok, f"rel={rel:.2e}")
            except Exception as e:  # noqa: BLE001
                report(name, False, repr(e)[:300])
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default="kernel_check_gpu.log")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help=f"comma-separated check groups of {CHECK_GROUPS} (default: all)")
    args = ap.parse_args(argv)
    only = None if args.only is None else tuple(args.only.split(","))
    if only is not None and set(only) - set(CHECK_GROUPS):
        ap.error(f"--only {args.only}: unknown group(s); choose from {CHECK_GROUPS}")
    with open(args.log, "w") as log:
        header = (f"# pallas_kernels GPU check\n# gpu: {gpu_name()}\n# jax: {jax.__version__}\n"
                  f"# date: {datetime.datetime.now(datetime.timezone.utc).isoformat()}\n")
        log.write(header)
        try:
            failures = run_checks(log, quick=args.quick, only=only)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=log)
            failures = -1
        log.write(f"# failures: {failures}\n")
    print(open(args.log).read()[-3000:])
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

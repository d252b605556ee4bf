"""Run every kernel against its reference on the GPU and write a log.

Usage (on the GPU machine, repo root)::

    python -m pallas_kernels.gpu_check --log benchmarks/results/kernel_check_gpu.log

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


def run_checks(log, quick: bool = False) -> int:
    failures = 0
    shapes_kn = SHAPES_KN[::3] if quick else SHAPES_KN
    ms = MS[1::2] if quick else MS
    seed = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", file=log, flush=True)

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
    args = ap.parse_args(argv)
    with open(args.log, "w") as log:
        header = (f"# pallas_kernels GPU check\n# gpu: {gpu_name()}\n# jax: {jax.__version__}\n"
                  f"# date: {datetime.datetime.now(datetime.timezone.utc).isoformat()}\n")
        log.write(header)
        try:
            failures = run_checks(log, quick=args.quick)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=log)
            failures = -1
        log.write(f"# failures: {failures}\n")
    print(open(args.log).read()[-3000:])
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

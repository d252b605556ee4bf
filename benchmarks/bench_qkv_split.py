"""A fused qkv's three outputs: one Mosaic GEMM writing three arrays vs three GEMMs vs one GEMM, one output (GPU).

``python -m benchmarks.bench_qkv_split [--ms 8192 32768]``: the int8 GEMM alone (``scaled_gemm``, Mosaic GPU,
bf16 out, with and without the zero-point epilogue) at K = 1152, N = 3 · 1152, per M: ``1gemm_1out`` (one
(M, 3456) output: the floor), ``3gemms`` (one GEMM per (M, 1152) block, the layout attention wants), ``1gemm_3out``
(one GEMM storing each tile into its block, ``out_splits=3, fuse_splits=True``). One JSON line per row with the GPU
name, JAX version and date (median of 50 calls over 3 rotating inputs)."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from benchmarks.common import environment, median_time
from pallas_kernels.ops.int8_matmul import scaled_gemm
from pallas_kernels.testing import rand_int, rand_scale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[8192, 32768])
    args = ap.parse_args(argv)
    env = environment()
    k, n = 1152, 3456
    w, ws, b = rand_int(9, (n, k), -128, 127), rand_scale(10, (n,)), jnp.ones((n,))
    zw = rand_int(11, (n,), -127, 127).astype(jnp.int32)
    for m in args.ms:
        xs = [(rand_int(i, (m, k), -127, 127), rand_scale(i, (m, 1)), jnp.ones((m, 1), jnp.int32)) for i in range(3)]
        for zp in (False, True):
            for name, kw in (("1gemm_1out", {}), ("3gemms", dict(out_splits=3)),
                             ("1gemm_3out", dict(out_splits=3, fuse_splits=True))):
                f = jax.jit(lambda x, s, r, kw=kw, zp=zp: scaled_gemm(
                    x, w, s, ws, b, out_dtype=jnp.bfloat16, backend="mosaic", w_zero=zw if zp else None,
                    x_row_sum=r if zp else None, **kw))
                us = median_time(f, xs, iters=50)["median_ms"] * 1e3
                print(json.dumps({"M": m, "K": k, "N": n, "zero_point": zp, "variant": name, "us": round(us, 1),
                                  **env}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

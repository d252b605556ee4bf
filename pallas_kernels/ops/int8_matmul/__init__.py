"""int8 x int8 -> int32 GEMM (Mosaic GPU wgmma / Pallas-Triton / XLA cuBLASLt) + fused epilogue.

The public dispatch: :func:`int8_gemm` (bare int32 output, or with the fused dequant epilogue)
and :func:`int8_matmul`; semantics in ``reference.py``, kernels in ``mosaic.py`` / ``triton.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from pallas_kernels import _config
from pallas_kernels._compat import (
    check_backend,
    gpu_name,
    is_hopper,
    log_once,
    on_gpu,
    plgpu,
    pltriton,
)
from pallas_kernels._debug import debug_override
from pallas_kernels.ops.int8_matmul import mosaic, triton
from pallas_kernels.ops.quantize.reference import CODE_DTYPES
from pallas_kernels.ops.int8_matmul.reference import (
    EPILOGUE_ACTIVATIONS,
    apply_activation,
    check_activation,
    check_rank1,
    check_zero_point,
    column_blocks,
    gate_rows,
    gemm_ref,
    int8_matmul_ref,
    rank1_ref,
    residual_gate_ref,
    scaled_epilogue_ref,
    zero_point_ref,
)

CONFIG_FILE = Path(__file__).with_name("configs.json")


def resolve_backend(backend: str, op: str) -> str:
    """Map ``auto`` to ``mosaic`` on Hopper, else ``xla`` (logging the fallback once)."""
    check_backend(backend)
    if backend == "reference":
        return "xla"
    if backend != "auto":
        return backend
    if is_hopper() and plgpu is not None:
        return "mosaic"
    log_once(
        f"{op}:auto",
        f"pallas_kernels.{op}: no Hopper GPU with Mosaic GPU (device {gpu_name()!r}); "
        "using the XLA path (lax.dot_general on the int8 / e4m3 codes + scales).",
    )
    return "xla"


def mosaic_config(m: int, k: int, n: int, kernel: str, out_itemsize: int = 2,
                  out_splits: int = 1) -> mosaic.MosaicGemmConfig | None:
    """Stored config for the shape (keyed by the whole N), shrunk to divide K and each output's
    ``N / out_splits`` columns and to fit shared memory (``None``: no fit)."""
    gpu_rows = debug_override("gemm_tiles", "stored") == "stored"
    cfg = mosaic.MosaicGemmConfig.from_dict(_config.lookup(CONFIG_FILE, kernel, m, k, n, {}, gpu_rows))
    c = n // out_splits
    return mosaic.fit_smem(mosaic.fit_config(cfg, k, c), c, out_itemsize)


def triton_config(m: int, k: int, n: int, kernel: str) -> triton.TritonGemmConfig | None:
    cfg = triton.TritonGemmConfig.from_dict(_config.lookup(CONFIG_FILE, kernel, m, k, n, {}))
    return triton.fit_config(cfg, m, k, n)


def _check_operands(xq: jax.Array, wq: jax.Array) -> None:
    if xq.ndim != 2 or wq.ndim != 2 or xq.shape[1] != wq.shape[1]:
        raise ValueError(f"expected xq (M, K) and wq (N, K); got {xq.shape} and {wq.shape}")


def int8_gemm(xq: jax.Array, wq: jax.Array, x_scale: jax.Array | None = None, w_scale: jax.Array | None = None,
              bias: jax.Array | None = None, *, out_dtype: jnp.dtype = jnp.int32, op: str = "int8_matmul",
              **kw) -> jax.Array:
    """int8 GEMM ``xq (M,K) x wq (N,K)^T`` (int32 accumulation); with scales the fused epilogue —
    :func:`scaled_gemm` (its keywords: ``backend``, ``activation``, zero points, gated residual, ...)."""
    if xq.dtype != jnp.int8 or wq.dtype != jnp.int8:
        raise TypeError(f"int8 operands required, got {xq.dtype} and {wq.dtype}")
    return scaled_gemm(xq, wq, x_scale, w_scale, bias, out_dtype=out_dtype, op=op, **kw)


def scaled_gemm(
    xq: jax.Array,
    wq: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.int32,
    backend: str = "auto",
    op: str = "int8_matmul",
    activation: str | None = None,
    approx_gelu: bool = True,
    fuse_activation: bool = True,
    w_zero: jax.Array | None = None,
    x_row_sum: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
    out_splits: int = 1,
    fuse_splits: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    """Quantized GEMM ``xq (M,K) x wq (N,K)^T`` of int8 (int32 accumulation) or FP8 e4m3 (float32
    accumulation) codes: THE dispatch of the quantized GEMMs (:func:`int8_gemm`,
    :func:`pallas_kernels.fp8_gemm`; the same kernels, tilings and fused epilogue for both). With scales
    the epilogue of ``reference.scaled_epilogue_ref`` is fused: the weight zero-point term
    ``x_row_sum[m] · w_zero[n]`` in int32 (int8 only: ``w_zero (N,)`` int32 with the quantizer's code sums
    ``x_row_sum (M,)``/``(M, 1)``), scales, bias, the rank-1 term ``u[m] · beta[n]`` (``rank1 = (u (M,),
    beta (N,))`` float32: ``reference.rank1_ref``), an optional ``activation``
    (``reference.EPILOGUE_ACTIVATIONS``), then ``residual (M, N) + gate (G, N) · y`` (``gate`` row ``g``
    covers rows ``[g·M/G, (g+1)·M/G)``).

    Mosaic GPU options (A/B switches for benchmarks; the other backends ignore them):
    ``approx_gelu`` — half-precision outputs evaluate the epilogue GELU with ``approx_math``
    (``tanh.approx.f32``, rel. error ~2^-11, below bf16's 2^-8 rounding; float32 outputs always
    keep the exact form); ``fuse_activation=False`` — apply ``activation`` by an XLA pass after the
    GEMM instead of inside its epilogue. ``$PALLAS_KERNELS_DEBUG`` may force both
    (``pallas_kernels._debug``).

    ``out_splits = S > 1``: a tuple of ``S`` outputs ``(M, N / S)``, the column blocks of the result (q, k,
    v of a fused qkv: each a contiguous array, so attention reads them without a copy); no residual/gate.
    ``fuse_splits=True``: ONE GEMM over the whole N writes them (Mosaic GPU: one kernel storing each output
    tile into its block's array, when the tile width divides ``N / S``; XLA: one GEMM, then the split;
    Pallas-Triton: one GEMM per block); ``False``: one GEMM per block on every backend (the path before
    the fused one; the switch to turn it off).

    Falls back to XLA (logged once) when the chosen kernel does not support the shape/device; a
    gate whose row span does not hold whole kernel row tiles is applied after the kernel (logged).
    """
    _check_operands(xq, wq)
    check_activation(activation)
    check_zero_point(w_zero, x_row_sum)
    scaled = x_scale is not None
    if not scaled and (activation is not None or w_zero is not None or residual is not None or gate is not None
                       or rank1 is not None):
        raise ValueError("an epilogue activation, zero point, rank-1 term, residual or gate needs the scales "
                         "(dequantizing epilogue)")
    if xq.dtype != wq.dtype or xq.dtype not in CODE_DTYPES:
        raise TypeError(f"int8 x int8 or e4m3 x e4m3 operands required, got {xq.dtype} and {wq.dtype}")
    if w_zero is not None and xq.dtype != jnp.int8:
        raise ValueError("zero points are an int8 epilogue term (FP8 weights are symmetric)")
    m, k = xq.shape
    n = wq.shape[0]
    if residual is not None and residual.shape != (m, n):
        raise ValueError(f"residual must be (M, N) = {(m, n)}, got {residual.shape}")
    rows_per_gate = gate_rows(m, gate)
    if gate is not None and gate.shape[1] != n:
        raise ValueError(f"gate must be (G, N={n}), got {gate.shape}")
    check_rank1(rank1, m, n)
    be = resolve_backend(backend, op)
    if out_splits != 1:
        return _column_split_gemm(xq, wq, x_scale, w_scale, bias, out_splits=out_splits, fuse=fuse_splits,
                                  out_dtype=out_dtype, backend=be, op=op, activation=activation,
                                  approx_gelu=approx_gelu, fuse_activation=fuse_activation, w_zero=w_zero,
                                  x_row_sum=x_row_sum, residual=residual, gate=gate, rank1=rank1)
    if be == "triton" and xq.dtype != jnp.int8 and on_gpu():
        # Measured on an H100 (gpu_check, 2026-12-06): Pallas-Triton's FP8 dot (mma.sync, not wgmma) loses
        # accumulation precision: rel. error 7.6e-3 at K = 1152 and 4.9e-2 at K = 4608 against the exact
        # float32 sum of the e4m3 products, where the Mosaic GPU kernel and XLA's FP8 dot are exact.
        raise ValueError(f"pallas_kernels.{op}: the Pallas-Triton GEMM is not accurate on FP8 operands on a GPU "
                         "(rel. error up to 5e-2 measured on an H100); use backend='mosaic', 'xla' or 'auto'")
    kname = "gemm_scaled" if scaled else "gemm_int32"
    zp = {"w_zero": w_zero, "x_row_sum": x_row_sum, "rank1": rank1}  # the terms before the activation
    if activation is not None and be == "mosaic" and not debug_override("fuse_activation", fuse_activation):
        y = scaled_gemm(xq, wq, x_scale, w_scale, bias, out_dtype=out_dtype, backend=be, op=op, **zp)
        y = apply_activation(y, activation)  # as before the fusion: an XLA pass over the output
        if residual is None and gate is None:
            return y
        return residual_gate_ref(y.astype(jnp.float32), residual, gate).astype(out_dtype)
    if be == "mosaic":
        cfg = mosaic_config(m, k, n, f"mosaic_{kname}", jnp.dtype(out_dtype if scaled else jnp.int32).itemsize)
        # (FP8 operands share the int8 tilings: same bytes per tile, same wgmma shapes)
        if on_gpu() and cfg is not None and mosaic.supports(k, n, cfg):
            if gate is not None and not mosaic.gate_fits(cfg, rows_per_gate):
                return _unfused_gate(xq, wq, x_scale, w_scale, bias, out_dtype, be, op, activation, zp,
                                     residual, gate, f"{rows_per_gate} rows per gate row, tile {cfg.tm}")
            return mosaic.mosaic_int8_gemm(
                xq, wq, x_scale, w_scale, bias, cfg=cfg, out_dtype=out_dtype, activation=activation,
                approx_gelu=debug_override("approx_gelu", approx_gelu), residual=residual, gate=gate, **zp,
            )
        log_once(f"{op}:mosaic:{k},{n}", f"pallas_kernels.{op}: Mosaic GPU kernel does not "
                 f"support K={k}, N={n} on {gpu_name()!r}; using XLA.")
        be = "xla"
    if be == "triton":
        cfg_t = triton_config(m, k, n, f"triton_{kname}")
        if pltriton is not None and cfg_t is not None:
            if gate is not None:
                bm = triton.gate_block_rows(cfg_t.bm, rows_per_gate)
                if not bm:
                    return _unfused_gate(xq, wq, x_scale, w_scale, bias, out_dtype, be, op, activation, zp,
                                         residual, gate, f"{rows_per_gate} rows per gate row")
                cfg_t = dataclasses.replace(cfg_t, bm=bm)
            return triton.triton_int8_gemm(
                xq, wq, x_scale, w_scale, bias, cfg=cfg_t, out_dtype=out_dtype,
                interpret=not on_gpu(), activation=activation, residual=residual, gate=gate, **zp,
            )
        log_once(f"{op}:triton:{k},{n}", f"pallas_kernels.{op}: Triton kernel does not "
                 f"support K={k}, N={n}; using XLA.")
    acc = gemm_ref(xq, wq)
    if not scaled:
        return acc
    return scaled_epilogue_ref(acc, x_scale, w_scale, bias, out_dtype, activation, residual=residual,
                               gate=gate, **zp)


def _column_split_gemm(xq, wq, x_scale, w_scale, bias, *, out_splits: int, fuse: bool, out_dtype, backend: str,
                       op: str, activation, approx_gelu, fuse_activation, w_zero, x_row_sum, residual, gate,
                       rank1) -> tuple[jax.Array, ...]:
    """:func:`scaled_gemm` with ``out_splits`` column-block outputs (``backend`` resolved): one GEMM writing
    all of them (``fuse``; Mosaic GPU kernel or XLA), else one :func:`scaled_gemm` per block."""
    m, k = xq.shape
    n = wq.shape[0]
    if residual is not None or gate is not None:
        raise ValueError("residual/gate apply to a whole output: not with out_splits > 1")
    column_blocks(wq, out_splits, axis=0)  # N must split evenly (one-line ValueError)
    kw = dict(out_dtype=out_dtype, activation=activation, w_zero=w_zero, x_row_sum=x_row_sum)
    if fuse and backend == "mosaic" and on_gpu():
        scaled = x_scale is not None
        cfg = mosaic_config(m, k, n, f"mosaic_{'gemm_scaled' if scaled else 'gemm_int32'}",
                            jnp.dtype(out_dtype if scaled else jnp.int32).itemsize, out_splits)
        fused_act = activation is None or debug_override("fuse_activation", fuse_activation)
        if cfg is not None and fused_act and mosaic.supports(k, n, cfg, out_splits):
            return mosaic.mosaic_int8_gemm(xq, wq, x_scale, w_scale, bias, cfg=cfg, rank1=rank1,
                                           approx_gelu=debug_override("approx_gelu", approx_gelu),
                                           out_splits=out_splits, **kw)
        why = ("fuse_activation off: the activation runs after the GEMM" if not fused_act else
               f"no stored tiling fits K={k} with a tile width dividing N={n // out_splits}")
        log_once(f"{op}:splits:{k},{n},{out_splits}", f"pallas_kernels.{op}: {out_splits} outputs not written by one "
                 f"Mosaic GPU kernel ({why}); one GEMM per output.")
    if fuse and backend == "xla":
        return column_blocks(scaled_gemm(xq, wq, x_scale, w_scale, bias, backend="xla", op=op, rank1=rank1, **kw),
                             out_splits)
    u, beta = (None, None) if rank1 is None else rank1
    kw.pop("w_zero")
    return tuple(
        scaled_gemm(xq, w, x_scale, ws, b, backend=backend, op=op, approx_gelu=approx_gelu,
                    fuse_activation=fuse_activation, w_zero=z, rank1=None if bt is None else (u, bt), **kw)
        for w, ws, b, z, bt in zip(*(column_blocks(a, out_splits, axis=0) for a in (wq, w_scale, bias, w_zero, beta)))
    )


def _unfused_gate(xq, wq, x_scale, w_scale, bias, out_dtype, be, op, activation, zp, residual, gate, why):
    """The kernel without gate/residual, then ``residual + gate · y`` by XLA (logged once)."""
    log_once(f"{op}:gate:{why}", f"pallas_kernels.{op}: gate not fused ({why}); applied after the GEMM.")
    y = scaled_gemm(xq, wq, x_scale, w_scale, bias, out_dtype=jnp.float32, backend=be, op=op,
                    activation=activation, **zp)  # float32: one rounding, as in the fused epilogue
    return residual_gate_ref(y, residual, gate).astype(out_dtype)


def int8_matmul(xq: jax.Array, wq: jax.Array, *, backend: str = "auto") -> jax.Array:
    """Bare GEMM ``xq (M,K) @ wq (N,K)^T``, int8 -> int32, exactly ``lax.dot_general``."""
    return int8_gemm(xq, wq, backend=backend, op="int8_matmul")


__all__ = [
    "CONFIG_FILE",
    "EPILOGUE_ACTIVATIONS",
    "column_blocks",
    "int8_gemm",
    "int8_matmul",
    "int8_matmul_ref",
    "mosaic_config",
    "gemm_ref",
    "rank1_ref",
    "residual_gate_ref",
    "resolve_backend",
    "scaled_gemm",
    "scaled_epilogue_ref",
    "triton_config",
    "zero_point_ref",
]

"""W4A8 linear: per-token int8 activations x packed int4 weights (per-channel or per-group).

The public dispatch; semantics in ``reference.py``, the int4 layout in ``packing.py``, the
Pallas-Triton kernel in ``triton.py``; the per-channel Hopper path is the int8 GEMM of
``ops.int8_matmul`` (Mosaic GPU) on weights unpacked by XLA.
"""

from __future__ import annotations

import functools
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
from pallas_kernels.ops.int8_matmul import int8_gemm
from pallas_kernels.ops.int8_matmul.reference import apply_activation, residual_gate_ref
from pallas_kernels.ops.int8_matmul.triton import TritonGemmConfig
from pallas_kernels.ops.quantize import quantize_per_token
from pallas_kernels.ops.rotate_quantize import rotate_quantize, rotate_ref
from pallas_kernels.ops.w4a8_linear.packing import (
    deinterleave_k,
    pack_int4,
    unpack_int4,
    unpack_nibbles,
)
from pallas_kernels.ops.w4a8_linear.reference import grouped_int8_matmul_ref, w4a8_linear_ref
from pallas_kernels.ops.w4a8_linear.triton import fit_w4_config, triton_w4a8_gemm
from pallas_kernels.ops.w8a8_linear import check_epilogue_args, check_linear_args, column_blocks, quantize_input

CONFIG_FILE = Path(__file__).with_name("configs.json")


def _resolve(backend: str, grouped: bool) -> str:
    """``auto``: per-channel on Hopper -> ``mosaic`` (weights unpacked to int8 once per call,
    then the wgmma W8A8 kernel); per-group on GPU -> ``triton`` (in-register unpacking and
    per-group scaling); otherwise ``xla``."""
    check_backend(backend)
    if backend == "reference":
        return "xla"
    if backend == "mosaic" and grouped:
        backend = "triton"  # the wgmma kernel has no per-group epilogue
    if backend != "auto":
        return backend
    if not grouped and is_hopper() and plgpu is not None:
        return "mosaic"
    if on_gpu() and pltriton is not None:
        return "triton"
    log_once("w4a8_linear:auto", f"pallas_kernels.w4a8_linear: no GPU ({gpu_name()!r});"
             " using the XLA path (unpack + int8 dot_general).")
    return "xla"


def w4a8_linear(
    x: jax.Array,
    qweight_packed: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    group_size: int | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
    backend: str = "auto",
    activation: str | None = None,
    splits: int = 1,
    act_quant: str = "auto",
    approx_gelu: bool = True,
    fuse_activation: bool = True,
    rotation: tuple | None = None,
    w_zero_point: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """W4A8 linear ``x (M, K) -> (M, N)``, then ``activation`` (fused into the wgmma epilogue on
    the per-channel Hopper path; applied by XLA after the Triton per-group kernel).

    ``qweight_packed`` uint8 ``(N, K // 2)`` (see :func:`pack_int4`); ``w_scale`` ``(N,)`` per
    channel, or ``(N, K // group_size)`` per group (``group_size`` given, or inferred).
    ``splits``: as in :func:`pallas_kernels.w8a8_linear` (one GEMM per column block on the
    Hopper path; other paths split one output). ``act_quant``, ``approx_gelu``,
    ``fuse_activation``: as in :func:`pallas_kernels.w8a8_linear` (the per-channel Hopper path).
    ``rotation=(h_base, signs)``: the GEMM input is the randomized Hadamard rotation of ``x``
    (:func:`pallas_kernels.ops.w8a8_linear.quantize_input`). ``w_zero_point (N,)`` (per-channel
    scales only), ``residual``, ``gate``: as in :func:`pallas_kernels.w8a8_linear` (fused into the
    epilogue on the Hopper path; the Triton path fuses the zero point, XLA applies the rest).
    """
    blocks = list(zip(*(column_blocks(a, splits, axis=0) for a in (qweight_packed, w_scale, bias, w_zero_point))))
    n, kh = qweight_packed.shape
    k = 2 * kh
    check_linear_args(x, qweight_packed, k, w_scale)
    check_epilogue_args(splits, w_zero_point, n, residual, gate)
    if w_zero_point is not None and w_scale.ndim != 1:
        raise ValueError("w4a8_linear: zero points need per-channel scales w_scale (N,), not per-group")
    zp = w_zero_point is not None
    extras = dict(residual=residual, gate=gate)
    if w_scale.ndim == 2:
        gs = k // w_scale.shape[1]
        if group_size is not None and group_size != gs:
            raise ValueError(f"group_size={group_size} inconsistent with w_scale {w_scale.shape}")
        if gs * w_scale.shape[1] != k:
            raise ValueError(f"K={k} not divisible into {w_scale.shape[1]} groups")
        group_size = gs
    elif group_size is not None and group_size != k:
        raise ValueError("per-group quantization needs w_scale of shape (N, K // group_size)")
    else:
        group_size = None
    be = _resolve(backend, group_size is not None)
    m = x.shape[0]
    if be == "mosaic":
        # Per-channel: unpacking N x K nibbles is a tiny XLA fusion next to the M x N x K GEMM.
        xq, xs, *rs = quantize_input(x, be, act_quant, rotation, row_sum=zp)
        outs = tuple(int8_gemm(xq, unpack_int4(w), xs, ws, b, out_dtype=out_dtype, backend="mosaic",
                               op="w4a8_linear", activation=activation, approx_gelu=approx_gelu,
                               fuse_activation=fuse_activation, w_zero=z, x_row_sum=rs[0] if zp else None,
                               **extras) for w, ws, b, z in blocks)
        return outs if splits > 1 else outs[0]
    if be == "triton":
        cfg = TritonGemmConfig.from_dict(_config.lookup(CONFIG_FILE, "triton_w4a8", m, k, n, {}))
        cfg_fit = fit_w4_config(cfg, m, k, n, group_size)
        if cfg_fit is not None:
            xq, xs, *rs = (quantize_per_token(x, row_sum=zp) if rotation is None
                           else rotate_quantize(x, *rotation, row_sum=zp))
            unfused = activation or residual is not None or gate is not None
            y = triton_w4a8_gemm(deinterleave_k(xq), qweight_packed, xs, w_scale, bias, cfg=cfg_fit,
                                 out_dtype=jnp.float32 if unfused else out_dtype, interpret=not on_gpu(),
                                 w_zero=w_zero_point, x_row_sum=rs[0] if zp else None)
            y = residual_gate_ref(apply_activation(y, activation), residual, gate) if unfused else y
            return _split_cols(y.astype(out_dtype), splits)
        log_once(f"w4a8:triton:{k},{n},{group_size}", f"pallas_kernels.w4a8_linear: Triton "
                 f"kernel does not support K={k}, N={n}, group={group_size}; using XLA.")
    if rotation is not None:  # the reference quantizes the rotated row per token: the same int8 input
        x = rotate_ref(x, *rotation)
    return _split_cols(_w4a8_xla(x, qweight_packed, w_scale, bias, out_dtype=out_dtype, activation=activation,
                                 w_zero_point=w_zero_point, **extras), splits)


def _split_cols(y: jax.Array, splits: int) -> jax.Array | tuple[jax.Array, ...]:
    return column_blocks(y, splits) if splits > 1 else y


@functools.partial(jax.jit, static_argnames=("out_dtype", "activation"))
def _w4a8_xla(x, qweight_packed, w_scale, bias, *, out_dtype, activation=None, w_zero_point=None,
              residual=None, gate=None):
    return w4a8_linear_ref(x, qweight_packed, w_scale, bias, out_dtype=out_dtype, activation=activation,
                           w_zero_point=w_zero_point, residual=residual, gate=gate)


__all__ = [
    "deinterleave_k",
    "grouped_int8_matmul_ref",
    "pack_int4",
    "unpack_int4",
    "unpack_nibbles",
    "w4a8_linear",
    "w4a8_linear_ref",
]

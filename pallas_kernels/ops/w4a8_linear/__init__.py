"""W4A8 linear: per-token int8 activations x packed int4 weights (per-channel or per-group).

The public dispatch; semantics in ``reference.py``, the int4 layout in ``packing.py``, the
Pallas-Triton kernel in ``triton.py``; the per-channel Hopper path is the int8 GEMM of
``ops.int8_matmul`` (Mosaic GPU) on weights unpacked by XLA.

:func:`group_gemm` is Q-DiT's form: activations already quantized per token AND per group (scales and
zero points ``(M, G)``) x per-group weights (packed int4 or int8, scales and zero points ``(N, G)``),
one group size on both sides; the same K loop with both sides' scales applied per group.
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
from pallas_kernels.ops.w4a8_linear.reference import group_gemm_ref, grouped_int8_matmul_ref, w4a8_linear_ref
from pallas_kernels.ops.w4a8_linear.triton import (
    GroupTiling,
    fit_group_tiling,
    fit_w4_config,
    triton_group_gemm,
    triton_w4a8_gemm,
)
from pallas_kernels.ops.quantize.reference import token_dot
from pallas_kernels.ops.w8a8_linear import (
    check_epilogue_args,
    check_linear_args,
    column_blocks,
    produced_input,
    quantize_input,
    rank1_parts,
)

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
    rank1: tuple | None = None,
    smooth: jax.Array | None = None,
    prenorm: tuple | None = None,
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
    ``rank1=(alpha, beta[, u_scale])``: the rank-1 branch of :func:`pallas_kernels.w8a8_linear` (``u``
    from the quantizer, ``u ⊗ beta`` in the epilogue of the Hopper and the Triton kernels alike).
    ``smooth`` / ``prenorm``: the GEMM input's producer, as in :func:`pallas_kernels.w8a8_linear` (fused
    into the rotating quantizer on the Hopper path; an XLA pass elsewhere).
    """
    blocks = list(zip(*(column_blocks(a, splits, axis=0) for a in (qweight_packed, w_scale, bias, w_zero_point))))
    n, kh = qweight_packed.shape
    k = 2 * kh
    check_linear_args(x, qweight_packed, k, w_scale)
    check_epilogue_args(splits, w_zero_point, n, residual, gate)
    alpha, beta, u_scale = rank1_parts(rank1, x.shape[0], k, n)
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
        xq, xs, *rs = quantize_input(x, be, act_quant, rotation, row_sum=zp, alpha=alpha, u_scale=u_scale,
                                     smooth=smooth, prenorm=prenorm)
        outs = tuple(int8_gemm(xq, unpack_int4(w), xs, ws, b, out_dtype=out_dtype, backend="mosaic",
                               op="w4a8_linear", activation=activation, approx_gelu=approx_gelu,
                               fuse_activation=fuse_activation, w_zero=z, x_row_sum=rs[0] if zp else None,
                               rank1=None if bt is None else (rs[-1], bt), **extras)
                     for (w, ws, b, z), bt in zip(blocks, column_blocks(beta, splits, axis=0)))
        return outs if splits > 1 else outs[0]
    x = produced_input(x, smooth, prenorm)  # the other paths take the producer's bf16 output
    if be == "triton":
        cfg = TritonGemmConfig.from_dict(_config.lookup(CONFIG_FILE, "triton_w4a8", m, k, n, {}))
        cfg_fit = fit_w4_config(cfg, m, k, n, group_size)
        if cfg_fit is not None:
            xq, xs, *rs = (quantize_per_token(x, row_sum=zp, alpha=alpha, u_scale=u_scale) if rotation is None
                           else rotate_quantize(x, *rotation, row_sum=zp))
            if alpha is not None and rotation is not None:  # (the rotating quantizer has no alpha output)
                rs.append(token_dot(xq, xs, alpha, u_scale))
            unfused = activation or residual is not None or gate is not None
            y = triton_w4a8_gemm(deinterleave_k(xq), qweight_packed, xs, w_scale, bias, cfg=cfg_fit,
                                 out_dtype=jnp.float32 if unfused else out_dtype, interpret=not on_gpu(),
                                 w_zero=w_zero_point, x_row_sum=rs[0] if zp else None,
                                 rank1=None if beta is None else (rs[-1], beta))
            y = residual_gate_ref(apply_activation(y, activation), residual, gate) if unfused else y
            return _split_cols(y.astype(out_dtype), splits)
        log_once(f"w4a8:triton:{k},{n},{group_size}", f"pallas_kernels.w4a8_linear: Triton "
                 f"kernel does not support K={k}, N={n}, group={group_size}; using XLA.")
    if rotation is not None:  # the reference quantizes the rotated row per token: the same int8 input
        x = rotate_ref(x, *rotation)
    return _split_cols(_w4a8_xla(x, qweight_packed, w_scale, bias, out_dtype=out_dtype, activation=activation,
                                 w_zero_point=w_zero_point, rank1=rank1, **extras), splits)


def _split_cols(y: jax.Array, splits: int) -> jax.Array | tuple[jax.Array, ...]:
    return column_blocks(y, splits) if splits > 1 else y


@functools.partial(jax.jit, static_argnames=("out_dtype", "activation"))
def _w4a8_xla(x, qweight_packed, w_scale, bias, *, out_dtype, activation=None, w_zero_point=None,
              residual=None, gate=None, rank1=None):
    return w4a8_linear_ref(x, qweight_packed, w_scale, bias, out_dtype=out_dtype, activation=activation,
                           w_zero_point=w_zero_point, residual=residual, gate=gate, rank1=rank1)


def group_gemm_tiling(m: int, k: int, n: int, group_size: int, packed: bool = True) -> GroupTiling | None:
    """The Triton tiling :func:`group_gemm` uses for this shape (``configs.json`` table ``triton_group``),
    ``None`` when the kernel cannot take it: a weight tile of >= 32 int8 columns (or, with ``unpack="kernel"``,
    >= 32 packed bytes) must divide the group, a column tile of >= 16 must divide N. With the stored
    ``unpack="xla"`` (int4 unpacked by XLA) every Q-DiT group size {32, 64, 128, 192, 288} fits; unpacked in
    the kernel, 16-byte packed tiles (groups 32 and 288) gave wrong sums on an H100, so those shapes run the
    reference."""
    return fit_group_tiling(group_config(m, k, n), m, k, n, group_size, packed)


def group_config(m: int, k: int, n: int) -> GroupTiling:
    """The stored (unfitted) group GEMM tiling for this shape on this GPU."""
    return GroupTiling.from_dict(_config.lookup(CONFIG_FILE, "triton_group", m, k, n, {}))


def group_gemm(
    xq: jax.Array,
    x_scale: jax.Array,
    w: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    x_zero: jax.Array | None = None,
    w_zero: jax.Array | None = None,
    out_dtype: jnp.dtype = jnp.bfloat16,
    backend: str = "auto",
    activation: str | None = None,
    splits: int = 1,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    tiling: GroupTiling | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """Q-DiT's GEMM ``(M, K) x (N, K) -> (M, N)`` on codes quantized per token and group (semantics:
    :func:`group_gemm_ref`), then ``activation`` and ``residual + gate · y`` (applied by XLA after
    the kernel, as in :func:`w4a8_linear`'s per-group path); ``splits``: column blocks of one output.

    ``xq`` int8 ``(M, K)``, ``x_scale`` float32 ``(M, G)``, ``x_zero`` int32 ``(M, G)`` or ``None``;
    ``w`` packed int4 uint8 ``(N, K // 2)`` or int8 ``(N, K)``, ``w_scale`` ``(N, G)``, ``w_zero``
    int32 ``(N, G)`` or ``None``. ``backend``: ``auto`` (the Pallas-Triton kernel on a GPU, else XLA),
    ``triton`` (interpret mode off GPU; ``mosaic`` means ``triton``: the wgmma kernel has no per-group
    epilogue), ``xla``/``reference``. Shapes without a tiling (:func:`group_gemm_tiling`) run the
    reference (logged once). ``tiling``: a :class:`GroupTiling` instead of the stored one (benchmark
    sweeps). Packed int4 weights with ``w_zero`` need ``w_zero`` in [-120, 119] (int4 zero points are in
    [-7, 8]): the default tiling folds it into the unpacked int8 codes.
    """
    check_backend(backend)
    if xq.ndim != 2 or xq.dtype != jnp.int8 or w_scale.ndim != 2:
        raise ValueError(f"group_gemm: xq must be int8 (M, K) and w_scale (N, G), got xq {xq.dtype} {xq.shape}, "
                         f"w_scale {w_scale.shape}")
    (m, k), (n, g) = xq.shape, w_scale.shape
    packed = w.dtype == jnp.uint8
    if w.dtype not in (jnp.uint8, jnp.int8) or w.shape != (n, k // 2 if packed else k) or k % g:
        raise ValueError(f"group_gemm: w must be packed int4 uint8 (N, K//2) or int8 (N, K) with w_scale (N, G), "
                         f"G dividing K={k}; got w {w.dtype} {w.shape}, w_scale {w_scale.shape}")
    for name, a, rows in (("x_scale", x_scale, m), ("x_zero", x_zero, m), ("w_zero", w_zero, n)):
        if a is not None and tuple(a.shape) != (rows, g):
            raise ValueError(f"group_gemm: {name} must be ({rows}, {g}), got {tuple(a.shape)}")
    check_epilogue_args(splits, None, n, residual, gate)
    be = "xla" if backend in ("xla", "reference") else "triton" if backend in ("triton", "mosaic") else (
        "triton" if on_gpu() and pltriton is not None else "xla")
    cfg = (group_gemm_tiling(m, k, n, k // g, packed) if tiling is None
           else fit_group_tiling(tiling, m, k, n, k // g, packed)) if be == "triton" else None
    if be == "triton" and cfg is None:
        log_once(f"group_gemm:{k},{n},{k // g},{packed}", f"pallas_kernels.group_gemm: no Triton tiling for "
                 f"K={k}, N={n}, group={k // g}; using XLA.")
    unfused = activation is not None or residual is not None or gate is not None
    dt = jnp.float32 if unfused else out_dtype
    if cfg is not None:
        y = triton_group_gemm(xq, w, x_scale, w_scale, bias, x_zero=x_zero, w_zero=w_zero, cfg=cfg, out_dtype=dt,
                              interpret=not on_gpu())
    else:
        y = _group_xla(xq, x_scale, w, w_scale, bias, x_zero=x_zero, w_zero=w_zero, out_dtype=dt)
    y = residual_gate_ref(apply_activation(y, activation), residual, gate) if unfused else y
    return _split_cols(y.astype(out_dtype), splits)


_group_xla = jax.jit(group_gemm_ref, static_argnames=("out_dtype",))


__all__ = [
    "GroupTiling",
    "deinterleave_k",
    "group_gemm",
    "group_gemm_ref",
    "group_gemm_tiling",
    "grouped_int8_matmul_ref",
    "pack_int4",
    "unpack_int4",
    "unpack_nibbles",
    "w4a8_linear",
    "w4a8_linear_ref",
]

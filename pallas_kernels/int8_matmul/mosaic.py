"""Mosaic GPU (Hopper, wgmma) int8 GEMM with an optional fused dequantizing epilogue.

One CTA computes a ``(tm, tn)`` output tile: a TMA pipeline (``plgpu.emit_pipeline``,
``stages`` slots) streams ``(tm, tk)`` activation tiles and ``(tn, tk)`` weight tiles (both
K-major, as s8 wgmma requires) into swizzled SMEM; each step issues
``wgmma.mma_async.s32.s8.s8`` into an int32 register accumulator and keeps one wgmma in flight.
The epilogue either stores the int32 accumulator, or computes
``acc * x_scale[m] * w_scale[n] (+ bias[n])`` in float32 registers and stores ``out_dtype``;
the result goes registers -> swizzled SMEM -> TMA store.

Shape requirements (checked by :func:`supports`): K % tk == 0, N % tn == 0. M is padded by the
caller-facing wrapper to a multiple of tm (the pad fuses into the producer of ``xq``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, plgpu


@dataclasses.dataclass(frozen=True)
class MosaicGemmConfig:
    tm: int = 128
    tn: int = 128
    tk: int = 128
    stages: int = 4
    # Grid order: "nm" puts N tiles on the fastest-varying grid axis (CTAs that run together
    # share the activation tile; the weights are small enough to live in L2).
    order: str = "nm"

    @classmethod
    def from_dict(cls, d: dict) -> "MosaicGemmConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def supports(k: int, n: int, cfg: MosaicGemmConfig) -> bool:
    return (
        plgpu is not None
        and k % cfg.tk == 0
        and n % cfg.tn == 0
        and cfg.tm % 64 == 0
        and cfg.tk in (32, 64, 128)
        and cfg.tn % 8 == 0
        and cfg.tn <= 256
    )


def _smem_transforms(minor_elems_bytes: int, itemsize: int) -> tuple:
    swizzle = plgpu.find_swizzle(minor_elems_bytes * 8)
    return (
        plgpu.TilingTransform((8, swizzle // itemsize)),
        plgpu.SwizzleTransform(swizzle),
    )


def _kernel(*refs, cfg: MosaicGemmConfig, k: int, scaled: bool, has_bias: bool):
    if scaled:
        if has_bias:
            x_g, w_g, xs_g, ws_g, b_g, o_g, o_smem = refs
        else:
            x_g, w_g, xs_g, ws_g, o_g, o_smem = refs
            b_g = None
    else:
        x_g, w_g, o_g, o_smem = refs
    tm, tn, tk = cfg.tm, cfg.tn, cfg.tk
    mi = lax.axis_index("m")
    ni = lax.axis_index("n")
    m_sl = pl.ds(mi * tm, tm)
    n_sl = pl.ds(ni * tn, tn)
    in_tf = _smem_transforms(tk, 1)

    def mainloop(acc_ref):
        def step(_, a_smem, b_smem):
            plgpu.wgmma(acc_ref, a_smem, b_smem.T)
            plgpu.wgmma_wait(1)

        plgpu.emit_pipeline(
            step,
            grid=(k // tk,),
            in_specs=[
                plgpu.BlockSpec((tm, tk), lambda kk: (0, kk), transforms=in_tf, delay_release=1),
                plgpu.BlockSpec((tn, tk), lambda kk: (0, kk), transforms=in_tf, delay_release=1),
            ],
            max_concurrent_steps=cfg.stages,
        )(x_g.at[m_sl, :], w_g.at[n_sl, :])
        plgpu.wgmma_wait(0)
        return acc_ref[...]

    acc = pl.run_scoped(mainloop, plgpu.ACC((tm, tn), jnp.int32))
    if scaled:
        row_layout = plgpu.Layout.WGMMA.reduce(1)
        col_layout = plgpu.Layout.WGMMA.reduce(0)
        xs = plgpu.load(xs_g.at[m_sl], (), layout=row_layout, optimized=False)
        ws = plgpu.load(ws_g.at[n_sl], (), layout=col_layout, optimized=False)
        y = acc.astype(jnp.float32)
        y = y * lax.broadcast_in_dim(xs, (tm, tn), [0])
        y = y * lax.broadcast_in_dim(ws, (tm, tn), [1])
        if b_g is not None:
            b = plgpu.load(b_g.at[n_sl], (), layout=col_layout, optimized=False)
            y = y + lax.broadcast_in_dim(b, (tm, tn), [1])
        y = y.astype(o_smem.dtype)
    else:
        y = acc
    o_smem[...] = y
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_g.at[m_sl, n_sl])
    plgpu.wait_smem_to_gmem(0)


def _compiler_params():
    lane = getattr(plgpu.LoweringSemantics, "Lane", None)
    if lane is not None:
        return plgpu.CompilerParams(lowering_semantics=lane)
    return plgpu.CompilerParams()


@functools.partial(jax.jit, static_argnames=("cfg", "out_dtype"))
def mosaic_int8_gemm(
    xq: jax.Array,
    wq: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    cfg: MosaicGemmConfig,
    out_dtype: jnp.dtype = jnp.int32,
) -> jax.Array:
    """``xq (M, K) int8`` x ``wq (N, K) int8``.

    Without scales: returns the exact int32 product. With ``x_scale (M,)/(M,1)`` and
    ``w_scale (N,)``: returns ``acc * x_scale * w_scale (+ bias)`` cast to ``out_dtype``.
    M need not be a multiple of ``cfg.tm`` (padded here); K and N must satisfy :func:`supports`.
    """
    m, k = xq.shape
    n = wq.shape[0]
    scaled = x_scale is not None
    if not scaled:
        out_dtype = jnp.int32
    out_dtype = jnp.dtype(out_dtype)
    mp = -(-m // cfg.tm) * cfg.tm
    if mp != m:
        xq = jnp.pad(xq, ((0, mp - m), (0, 0)))
    args = [xq, wq]
    if scaled:
        xs = jnp.reshape(x_scale, (-1,)).astype(jnp.float32)
        if mp != m:
            xs = jnp.pad(xs, (0, mp - m))
        args += [xs, jnp.reshape(w_scale, (-1,)).astype(jnp.float32)]
        if bias is not None:
            args.append(jnp.reshape(bias, (-1,)).astype(jnp.float32))
    out_tf = _smem_transforms(cfg.tn * out_dtype.itemsize, out_dtype.itemsize)
    if cfg.order == "nm":
        grid, names = (n // cfg.tn, mp // cfg.tm), ("n", "m")
    else:
        grid, names = (mp // cfg.tm, n // cfg.tn), ("m", "n")
    body = functools.partial(
        _kernel, cfg=cfg, k=k, scaled=scaled, has_bias=scaled and bias is not None
    )
    scratch = [plgpu.SMEM((cfg.tm, cfg.tn), out_dtype, transforms=out_tf)]
    out_type = jax.ShapeDtypeStruct((mp, n), out_dtype)
    try:
        call = plgpu.kernel(
            body,
            out_type=out_type,
            scratch_types=scratch,
            grid=grid,
            grid_names=names,
            compiler_params=_compiler_params(),
        )
    except TypeError:  # older spelling
        call = plgpu.kernel(
            body,
            out_shape=out_type,
            scratch_shapes=scratch,
            grid=grid,
            grid_names=names,
            compiler_params=_compiler_params(),
        )
    out = call(*args)
    return out[:m] if mp != m else out

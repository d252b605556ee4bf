"""Pallas-Triton fused producer: LayerNorm (no affine) + adaLN modulate + smoothing + quantize.

Grid ``(B, cdiv(L, bm))``; each program loads a ``(bm, K)`` row block of sample ``b`` once
(as K/chunk power-of-two register tiles, statically unrolled),
normalizes in float32, applies ``* (1 + scale[b]) + shift[b]`` and ``* smooth``, and writes the
per-token int8 values and scales (one HBM read of ``x``, one int8 write). The optional Hadamard
``hook`` of the reference is not fused (the XLA path handles it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels._compat import pl, triton_compiler_params
from pallas_kernels.ops.quantize.triton import (
    fit_chunk,
    load_chunks,
    quantize_chunks,
    rows_per_block,
)


@dataclasses.dataclass(frozen=True)
class ProducerConfig:
    """Same tiling rules as :class:`pallas_kernels.ops.quantize.triton.QuantizeTiling`."""

    bm: int = 0
    chunk: int = 1024
    num_warps: int = 4
    num_stages: int = 1
    tile_elems: int = 1024


def _kernel(x_ref, shift_ref, scale_ref, smooth_ref, q_ref, s_ref, *, eps: float, chunk: int,
            interpret: bool):
    xs = load_chunks(x_ref, chunk)  # K/chunk float32 (bm, chunk) register tiles
    k = x_ref.shape[-1]
    mean = sum(jnp.sum(c, axis=1, keepdims=True) for c in xs) / k
    xs = [c - mean for c in xs]
    var = sum(jnp.sum(c * c, axis=1, keepdims=True) for c in xs) / k
    rstd = jax.lax.rsqrt(var + eps)
    ys = []
    for i, c in enumerate(xs):
        sl = pl.ds(i * chunk, chunk)
        ys.append((c * rstd * (1.0 + scale_ref[:, sl]) + shift_ref[:, sl]) * smooth_ref[:, sl])
    quantize_chunks(ys, q_ref, s_ref, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("eps", "cfg", "interpret"))
def triton_fused_producer(
    x: jax.Array,
    shift: jax.Array,
    scale: jax.Array,
    smooth: jax.Array,
    *,
    eps: float,
    cfg: ProducerConfig = ProducerConfig(),
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``x (B, L, K)``, ``shift/scale (B, 1, K)`` f32, ``smooth (K,)`` -> int8 + ``(B, L, 1)``."""
    b, l, k = x.shape
    chunk = fit_chunk(k, cfg.chunk)
    if not chunk:
        raise ValueError(f"K={k} has no power-of-two divisor >= 16")
    bm = rows_per_block(cfg.bm, chunk, cfg.tile_elems)
    lp = -(-l // bm) * bm
    xp = x if lp == l else jnp.pad(x, ((0, 0), (0, lp - l), (0, 0)))
    row = lambda bi, i: (bi, i, 0)  # noqa: E731
    per_sample = lambda bi, i: (bi, 0, 0)  # noqa: E731
    q, s = pl.pallas_call(
        functools.partial(_kernel, eps=eps, chunk=chunk, interpret=interpret),
        out_shape=(jax.ShapeDtypeStruct((b, lp, k), jnp.int8),
                   jax.ShapeDtypeStruct((b, lp, 1), jnp.float32)),
        grid=(b, lp // bm),
        in_specs=[
            pl.BlockSpec((None, bm, k), row),
            pl.BlockSpec((None, 1, k), per_sample),
            pl.BlockSpec((None, 1, k), per_sample),
            pl.BlockSpec((1, k), lambda bi, i: (0, 0)),
        ],
        out_specs=(pl.BlockSpec((None, bm, k), row), pl.BlockSpec((None, bm, 1), row)),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(xp, shift.astype(jnp.float32), scale.astype(jnp.float32),
      smooth.reshape(1, k).astype(jnp.float32))
    return (q[:, :l], s[:, :l]) if lp != l else (q, s)

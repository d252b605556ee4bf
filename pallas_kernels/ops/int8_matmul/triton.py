"""Pallas-Triton int8 GEMM with an optional fused dequantizing epilogue.

Kept for three reasons: it runs on CPU in ``interpret=True`` mode (CI twin of the Mosaic GPU
kernel), it runs on non-Hopper GPUs, and it hosts the W4A8 kernel (in-register int4 unpacking).
Grid ``(M/bm, N/bn)``; each program loops over K in ``bk`` steps with an int32 accumulator, weights
``(N, K)`` K-major (the fast layout for Triton int8 dots). M is padded to a multiple of ``bm``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._compat import pl, triton_compiler_params
from pallas_kernels.ops.int8_matmul.reference import NT_DIMS, apply_activation, check_activation


@dataclasses.dataclass(frozen=True)
class TritonGemmConfig:
    bm: int = 128
    bn: int = 128
    bk: int = 128
    num_warps: int = 8
    num_stages: int = 3

    @classmethod
    def from_dict(cls, d: dict) -> "TritonGemmConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


def fit_config(cfg: TritonGemmConfig, m: int, k: int, n: int) -> TritonGemmConfig | None:
    """Shrink block sizes (powers of two) to divide K and N; ``None`` if impossible (< 16)."""
    bk, bn = cfg.bk, cfg.bn
    while bk >= 16 and k % bk:
        bk //= 2
    while bn >= 16 and n % bn:
        bn //= 2
    if bk < 16 or bn < 16:
        return None
    bm = cfg.bm
    while bm > 16 and bm >= 2 * max(m, 16):
        bm //= 2
    return dataclasses.replace(cfg, bm=bm, bn=bn, bk=bk)


def epilogue(acc_f32: jax.Array, xs_ref, ws, b_ref, out_ref, activation: str | None = None) -> None:
    """Shared in-kernel epilogue: ``activation(acc * xs (bm,1) * ws (1,bn) (+ bias (1,bn)))`` -> out_ref."""
    y = acc_f32 * xs_ref[...]
    if ws is not None:
        y = y * ws
    if b_ref is not None:
        y = y + b_ref[...]
    out_ref[...] = apply_activation(y, activation, in_kernel=True).astype(out_ref.dtype)


def _kernel(*refs, k: int, bk: int, scaled: bool, has_bias: bool, activation=None):
    if scaled:
        if has_bias:
            x_ref, w_ref, xs_ref, ws_ref, b_ref, o_ref = refs
        else:
            x_ref, w_ref, xs_ref, ws_ref, o_ref = refs
            b_ref = None
    else:
        x_ref, w_ref, o_ref = refs
    bm, bn = o_ref.shape

    def body(i, acc):
        sl = pl.ds(pl.multiple_of(i * bk, bk), bk)
        return acc + lax.dot_general(
            x_ref[:, sl], w_ref[:, sl], NT_DIMS, preferred_element_type=jnp.int32
        )

    acc = lax.fori_loop(0, k // bk, body, jnp.zeros((bm, bn), jnp.int32))
    if scaled:
        epilogue(acc.astype(jnp.float32), xs_ref, ws_ref[...], b_ref, o_ref, activation)
    else:
        o_ref[...] = acc


def pad_rows(a: jax.Array, mult: int) -> jax.Array:
    m = a.shape[0]
    mp = -(-m // mult) * mult
    return a if mp == m else jnp.pad(a, ((0, mp - m),) + ((0, 0),) * (a.ndim - 1))


@functools.partial(jax.jit, static_argnames=("cfg", "out_dtype", "interpret", "activation"))
def triton_int8_gemm(
    xq: jax.Array,
    wq: jax.Array,
    x_scale: jax.Array | None = None,
    w_scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    cfg: TritonGemmConfig,
    out_dtype: jnp.dtype = jnp.int32,
    interpret: bool = False,
    activation: str | None = None,
) -> jax.Array:
    """Same contract as :func:`pallas_kernels.ops.int8_matmul.mosaic.mosaic_int8_gemm`."""
    check_activation(activation)
    m, k = xq.shape
    n = wq.shape[0]
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    scaled = x_scale is not None
    out_dtype = jnp.dtype(out_dtype if scaled else jnp.int32)
    xq = pad_rows(xq, bm)
    mp = xq.shape[0]
    args = [xq, wq]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
        pl.BlockSpec((bn, k), lambda i, j: (j, 0)),
    ]
    if scaled:
        args += [
            pad_rows(jnp.reshape(x_scale, (-1, 1)).astype(jnp.float32), bm),
            jnp.reshape(w_scale, (1, -1)).astype(jnp.float32),
        ]
        in_specs += [
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j: (0, j)),
        ]
        if bias is not None:
            args.append(jnp.reshape(bias, (1, -1)).astype(jnp.float32))
            in_specs.append(pl.BlockSpec((1, bn), lambda i, j: (0, j)))
    out = pl.pallas_call(
        functools.partial(
            _kernel, k=k, bk=bk, scaled=scaled, has_bias=scaled and bias is not None,
            activation=activation if scaled else None,
        ),
        out_shape=jax.ShapeDtypeStruct((mp, n), out_dtype),
        grid=(mp // bm, n // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=triton_compiler_params(cfg.num_warps, cfg.num_stages),
        interpret=interpret,
    )(*args)
    return out[:m] if mp != m else out

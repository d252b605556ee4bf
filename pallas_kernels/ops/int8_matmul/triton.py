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
from pallas_kernels.ops.int8_matmul.reference import (
    NT_DIMS,
    apply_activation,
    check_activation,
    check_rank1,
    check_zero_point,
    gate_rows,
)


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


def epilogue(acc: jax.Array, xs_ref, ws, b_ref, out_ref, activation: str | None = None, *,
             zw=None, rs_ref=None, res_ref=None, gate=None, u_ref=None, beta=None) -> None:
    """Shared in-kernel epilogue (``reference.scaled_epilogue_ref``): an int32 ``acc`` first gets
    the zero-point term ``rs (bm,1) · zw (1,bn)`` in int32; then ``activation(acc * xs (bm,1) *
    ws (1,bn) (+ bias (1,bn)) (+ u (bm,1) · beta (1,bn)))`` in float32, ``res (bm,bn) + gate (1,bn) · y``,
    -> out_ref."""
    if zw is not None:
        acc = acc + rs_ref[...] * zw
    y = acc.astype(jnp.float32) * xs_ref[...]
    if ws is not None:
        y = y * ws
    if b_ref is not None:
        y = y + b_ref[...]
    if u_ref is not None:  # the rank-1 term (reference.rank1_ref)
        y = y + u_ref[...] * beta
    y = apply_activation(y, activation, in_kernel=True)
    if gate is not None:
        y = y * gate
    if res_ref is not None:
        y = res_ref[...].astype(jnp.float32) + y
    out_ref[...] = y.astype(out_ref.dtype)


# Optional epilogue operands, in argument order after (x, w[, xs, ws]): name -> (rows, cols) role.
EPILOGUE_OPERANDS = ("bias", "w_zero", "x_row_sum", "residual", "gate", "rank1_u", "rank1_beta")


def _kernel(*refs, k: int, bk: int, scaled: bool, present: tuple[str, ...], activation=None):
    x_ref, w_ref, *rest = refs
    o_ref = rest.pop()
    xs_ref = ws_ref = None
    if scaled:
        xs_ref, ws_ref, *rest = rest
    ops = dict(zip(present, rest))
    bm, bn = o_ref.shape

    def body(i, acc):
        sl = pl.ds(pl.multiple_of(i * bk, bk), bk)
        return acc + lax.dot_general(
            x_ref[:, sl], w_ref[:, sl], NT_DIMS, preferred_element_type=_acc_dtype(x_ref.dtype)
        )

    acc = lax.fori_loop(0, k // bk, body, jnp.zeros((bm, bn), _acc_dtype(x_ref.dtype)))
    if not scaled:
        o_ref[...] = acc
        return
    get = lambda name: ops[name][...] if name in ops else None  # noqa: E731
    epilogue(acc, xs_ref, ws_ref[...], ops.get("bias"), o_ref, activation,
             zw=get("w_zero"), rs_ref=ops.get("x_row_sum"), res_ref=ops.get("residual"), gate=get("gate"),
             u_ref=ops.get("rank1_u"), beta=get("rank1_beta"))


def _acc_dtype(operand_dtype) -> jnp.dtype:
    """int32 accumulation for int8 operands, float32 for floating (FP8) ones."""
    return jnp.int32 if jnp.issubdtype(operand_dtype, jnp.integer) else jnp.float32


def gate_block_rows(bm: int, rows_per_gate: int) -> int:
    """The largest power-of-two row block ``<= bm`` (``>= 16``) inside one gate row's span (0: none)."""
    while bm >= 16 and rows_per_gate % bm:
        bm //= 2
    return bm if bm >= 16 else 0


def rank1_operands(rank1: tuple | None, bm: int, row, col) -> dict:
    """The rank-1 term's kernel operands ``{"rank1_u": (u (Mp, 1), row spec), "rank1_beta": (beta (1, N),
    col spec)}`` (``None`` arrays without ``rank1``), for the Triton kernels' operand tables."""
    u, beta = (None, None) if rank1 is None else rank1
    return {"rank1_u": (None if u is None else pad_rows(jnp.reshape(u, (-1, 1)).astype(jnp.float32), bm), row),
            "rank1_beta": (None if beta is None else jnp.reshape(beta, (1, -1)).astype(jnp.float32), col)}


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
    w_zero: jax.Array | None = None,
    x_row_sum: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
) -> jax.Array:
    """Same contract as :func:`pallas_kernels.ops.int8_matmul.mosaic.mosaic_int8_gemm`; int8 or FP8
    operands (int32 / float32 accumulation). With ``gate (G, N)`` the row block ``cfg.bm`` must lie
    inside one gate row's span (``(M / G) % bm == 0``, see :func:`gate_block_rows`)."""
    check_activation(activation)
    m, k = xq.shape
    n = wq.shape[0]
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    scaled = x_scale is not None
    out_dtype = jnp.dtype(out_dtype if scaled else _acc_dtype(xq.dtype))
    rows_per_gate = gate_rows(m, gate)
    if gate is not None and rows_per_gate % bm:
        raise ValueError(f"gate rows of {rows_per_gate} tokens do not hold whole {bm}-row blocks")
    check_rank1(rank1, m, n)
    xq = pad_rows(xq, bm)
    mp = xq.shape[0]
    args = [xq, wq]
    in_specs = [
        pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
        pl.BlockSpec((bn, k), lambda i, j: (j, 0)),
    ]
    present: list[str] = []
    if scaled:
        row = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
        col = pl.BlockSpec((1, bn), lambda i, j: (0, j))
        args += [pad_rows(jnp.reshape(x_scale, (-1, 1)).astype(jnp.float32), bm),
                 jnp.reshape(w_scale, (1, -1)).astype(jnp.float32)]
        in_specs += [row, col]
        extra = {
            "bias": (None if bias is None else jnp.reshape(bias, (1, -1)).astype(jnp.float32), col),
            "w_zero": (None if w_zero is None else jnp.reshape(w_zero, (1, -1)).astype(jnp.int32), col),
            "x_row_sum": (None if x_row_sum is None
                          else pad_rows(jnp.reshape(x_row_sum, (-1, 1)).astype(jnp.int32), bm), row),
            "residual": (None if residual is None else pad_rows(residual, bm),
                         pl.BlockSpec((bm, bn), lambda i, j: (i, j))),
            "gate": (None if gate is None else gate.astype(jnp.float32),
                     pl.BlockSpec((1, bn), lambda i, j: (i * bm // rows_per_gate, j))),
            **rank1_operands(rank1, bm, row, col),
        }
        check_zero_point(w_zero, x_row_sum)
        for name in EPILOGUE_OPERANDS:
            a, spec = extra[name]
            if a is not None:
                present.append(name)
                args.append(a)
                in_specs.append(spec)
    out = pl.pallas_call(
        functools.partial(
            _kernel, k=k, bk=bk, scaled=scaled, present=tuple(present),
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

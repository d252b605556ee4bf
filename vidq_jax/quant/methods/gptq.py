"""GPTQ weight quantization (``w_method="gptq"``; Q-DiT's weights, Frantar et al. 2023).

The balanced weight ``W' = (W · diag(s))ᵀ · R`` (``(N, K)``, see :mod:`vidq_jax.quant.record`) is quantized
column by column (``k = 0 .. K-1``, no act-order) by the layer's min-max quantizer; the rounding error of
each column is spread over the not yet quantized columns through the inverse Hessian of the layer's
input, so that the layer OUTPUT error ``‖X'W'ᵀ - X'Ŵ'ᵀ‖`` is small rather than the weight error:

* Hessian ``H = Σ x'ᵀx'`` of the BALANCED input ``x' = (x / s) · R`` — computed from the calibration
  statistic ``"hessian"`` (``Σ xᵀx`` of the raw input) as ``H' = Rᵀ diag(1/s) H diag(1/s) R`` (float64);
  columns with ``H_kk = 0`` (dead inputs) get ``W'_:,k = 0``;
* damping ``λ = 1 %`` of the mean diagonal (raised ×10 and retried, with a warning, while ``H + λI`` is not
  positive definite); ``U`` = upper Cholesky factor of ``(H + λI)⁻¹``;
* column ``k``: ``q_k = Q(w_k)``, ``e_k = (w_k - q_k) / U_kk``, ``w_j -= e_k U_kj`` for the later columns;
* lazy batch updates: the columns are processed in blocks of 128 (inside a block the update touches
  only the block; the rest of ``W'`` gets one ``E · U[block, rest]`` GEMM per block);
* group-wise scale refresh: with ``w_granularity="group"`` the (scale, zero point) of a group are computed,
  min-max, from the group's columns when its first column is reached — i.e. from the weights already
  corrected by the error feedback of every earlier column. Blocks are aligned to groups (128 columns, or
  one group per block for group sizes that do not divide 128, e.g. Q-DiT's 192 / 288), so the refresh
  always sees fully updated values (the reference implementation, with 128-column blocks, would read
  stale ones for groups straddling a block edge). Per-channel / per-tensor scales come from the initial
  weight.

The result is an ordinary :class:`~vidq_jax.quant.record.QuantizedWeight` (same layout as round-to-nearest,
so every backend runs it). Layer order: :mod:`vidq_jax.quant.sequential` collects each layer's Hessian
with the layers executed before it already quantized (``WeightMethod.sequential``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import pack_int4  # the int4 storage layout (one packer, as in record.py)
from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.hadamard import hadamard_matrix
from vidq_jax.quant.methods.rtn import quantize as rtn_quantize
from vidq_jax.quant.quantizers import QuantSpec, compute_qparams
from vidq_jax.quant.record import QuantizedWeight, balanced_weight

DAMP = 0.01
"""Damping: this fraction of the mean Hessian diagonal is added to the diagonal."""
BLOCK = 128
"""Columns per lazy-batch block (aligned to the group size, see the module docstring)."""
_MAX_DAMP_RETRIES = 4


def block_size(k: int, group: int | None, block: int = BLOCK) -> int:
    """Columns per block for ``C_in = k``: the largest divisor of ``k`` up to ``max(block, group)`` that
    is a multiple of the group size (so groups never straddle a block edge)."""
    g = group or 1
    limit = max(block, g)
    return max(d for d in range(g, min(limit, k) + 1, g) if k % d == 0)


def balanced_hessian(xtx: np.ndarray, smooth: Any = None, hadamard_signs: Any = None) -> np.ndarray:
    """``H' = Rᵀ diag(1/s) H diag(1/s) R`` (float64 ``(K, K)``): the Hessian of the balanced input
    ``x' = (x / s) · R`` from ``H = Σ xᵀx`` of the raw input."""
    h = np.asarray(xtx, np.float64)
    if smooth is not None:
        inv = 1.0 / np.asarray(smooth, np.float64)
        h = h * inv[:, None] * inv[None, :]
    if hadamard_signs is not None:
        r = hadamard_matrix(h.shape[0], np.asarray(hadamard_signs, np.float64))  # R = diag(h) H / sqrt(K)
        h = r.T @ h @ r
    return 0.5 * (h + h.T)


def inverse_cholesky(h: np.ndarray, damp: float = DAMP, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(U, dead)``: the upper Cholesky factor of ``(H + λI)⁻¹`` (float64) with ``λ = damp · mean diag``
    (dead inputs, ``H_kk = 0``, get ``H_kk = 1`` first) and the dead-column mask."""
    h = np.array(h, np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    lam = damp * mean
    for attempt in range(_MAX_DAMP_RETRIES + 1):
        try:
            lower = np.linalg.cholesky(h + lam * np.eye(len(h)))
            hinv = np.linalg.inv(lower)
            hinv = hinv.T @ hinv  # (H + λI)^-1
            return np.linalg.cholesky(hinv).T, dead
        except np.linalg.LinAlgError:
            if attempt == _MAX_DAMP_RETRIES:
                raise ValueError(f"GPTQ{' layer ' + repr(where) if where else ''}: the Hessian is not positive "
                                 f"definite even with damping {lam / mean:.0%} of its mean diagonal") from None
            lam *= 10.0
            warnings.warn(f"GPTQ{' layer ' + repr(where) if where else ''}: Hessian not positive definite, damping "
                          f"raised to {lam / mean:.0%} of its mean diagonal", stacklevel=3)
    raise AssertionError("unreachable")


def _qparams_rows(w: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """Per-row min-max ``(scale (N,), zp (N,))`` of ``w (N, c)`` (zp 0 when symmetric)."""
    s, z = compute_qparams(w, QuantSpec(spec.bits, spec.symmetric, "channel"))
    return s, (jnp.zeros_like(s, jnp.int32) if z is None else z)


def _round(w: jax.Array, s: jax.Array, z: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """``(q, w_hat)`` of a column ``w (N,)`` with per-row ``s``, ``z`` (the conventions of quantizers.py)."""
    zf = z.astype(jnp.float32)
    q = jnp.clip(jnp.round(w / s) - zf, spec.qmin, spec.qmax)
    return q, (q + zf) * s


@functools.partial(jax.jit, static_argnames=("spec", "block"))
def gptq_quantize(w: jax.Array, u: jax.Array, spec: QuantSpec, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """GPTQ of ``w (N, K)`` given the upper Cholesky factor ``u (K, K)`` of the damped inverse Hessian:
    ``(q int8 (N, K), scale, zero_point int32)`` with the canonical scale shapes of ``spec`` (module
    docstring). ``block`` divides ``K`` and is a multiple of the group size."""
    n, k = w.shape
    w = w.astype(jnp.float32)
    u = u.astype(jnp.float32)
    grouped = spec.granularity == "group"
    g = spec.group_size if grouped else k
    ngroups = k // g if grouped else 1
    if grouped:
        scales = jnp.ones((n, ngroups), jnp.float32)
        zps = jnp.zeros((n, ngroups), jnp.int32)
    else:
        s0, z0 = compute_qparams(w, spec)  # from the initial weight: () or (N,)
        scales = jnp.broadcast_to(jnp.reshape(s0, (-1, 1)), (n, 1)).astype(jnp.float32)
        zps = jnp.zeros((n, 1), jnp.int32) if z0 is None else jnp.broadcast_to(jnp.reshape(z0, (-1, 1)), (n, 1))
    cols = jnp.arange(k)

    def block_step(b, carry):
        w, q, scales, zps = carry
        i1 = b * block
        w1 = jax.lax.dynamic_slice(w, (0, i1), (n, block))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (block, block))

        def column(i, c):
            w1, q1, e1, scales, zps = c
            j = i1 + i
            if grouped:
                def refresh(sz):
                    s, z = _qparams_rows(jax.lax.dynamic_slice(w1, (0, i), (n, g)), spec)
                    return (jax.lax.dynamic_update_slice(sz[0], s[:, None], (0, j // g)),
                            jax.lax.dynamic_update_slice(sz[1], z[:, None], (0, j // g)))

                scales, zps = jax.lax.cond(i % g == 0, refresh, lambda sz: sz, (scales, zps))
                s, z = scales[:, j // g], zps[:, j // g]
            else:
                s, z = scales[:, 0], zps[:, 0]
            col = w1[:, i]
            qi, wq = _round(col, s, z, spec)
            err = (col - wq) / u1[i, i]
            w1 = w1 - err[:, None] * u1[i][None, :]  # u1 is upper triangular: columns >= i only
            q1 = q1.at[:, i].set(qi)
            e1 = e1.at[:, i].set(err)
            return w1, q1, e1, scales, zps

        zeros = jnp.zeros((n, block), jnp.float32)
        _, q1, e1, scales, zps = jax.lax.fori_loop(0, block, column, (w1, zeros, zeros, scales, zps))
        q = jax.lax.dynamic_update_slice(q, q1, (0, i1))
        rows = jax.lax.dynamic_slice(u, (i1, 0), (block, k))  # zero left of the block (upper triangular)
        upd = jnp.matmul(e1, rows, precision=jax.lax.Precision.HIGHEST)
        w = w - jnp.where(cols[None, :] >= i1 + block, upd, 0.0)  # lazy batch update of the later columns
        return w, q, scales, zps

    q = jnp.zeros((n, k), jnp.float32)
    _, q, scales, zps = jax.lax.fori_loop(0, k // block, block_step, (w, q, scales, zps))
    if spec.granularity == "group":
        scale, zp = scales, zps
    elif spec.granularity == "channel":
        scale, zp = scales[:, 0], zps[:, 0]
    else:
        scale, zp = scales[0, 0], zps[0, 0]
    return q.astype(jnp.int8), scale, (None if spec.symmetric else zp)


def quantize(kernel: jax.Array, layer: LayerQuant, *, stats: Any = None, name: str = "", **balance: Any
             ) -> QuantizedWeight:
    """The GPTQ record of one layer (the method seam's arguments, :mod:`vidq_jax.quant.methods`);
    ``stats.extra["hessian"]`` (:class:`~vidq_jax.quant.stats.Hessian`) is the raw input's ``Σ xᵀx``.
    Same record layout as round-to-nearest."""
    hess = None if stats is None else getattr(stats, "extra", {}).get("hessian")
    if hess is None:
        raise ValueError(f"layer {name!r}: w_method='gptq' needs the 'hessian' calibration statistic (calibration "
                         "batches, or stats= collected with statistics=('hessian',))")
    # validation, activation parameters and the record layout: the round-to-nearest record, whose integers
    # and weight scales GPTQ then replaces
    base = rtn_quantize(kernel, layer, name=name, **balance)
    smooth, hadamard_signs = balance.get("smooth"), balance.get("hadamard_signs")
    k = int(kernel.shape[0])
    if hess.xtx.shape != (k, k):
        raise ValueError(f"layer {name!r}: Hessian of shape {hess.xtx.shape} for C_in={k}")
    spec = layer.weight_spec()
    u, dead = inverse_cholesky(balanced_hessian(hess.xtx, smooth, hadamard_signs), where=name)
    w = balanced_weight(kernel, smooth, hadamard_signs)
    if dead.any():
        w = w * jnp.asarray(~dead, jnp.float32)[None, :]
    q, scale, zp = gptq_quantize(w, jnp.asarray(u, jnp.float32), spec,
                                 block_size(k, spec.group_size if spec.granularity == "group" else None))
    return base.replace(qvalue=pack_int4(q) if layer.packed else q, scale=scale, zero_point=zp)


__all__ = ["BLOCK", "DAMP", "balanced_hessian", "block_size", "gptq_quantize", "inverse_cholesky", "quantize"]

"""Round-to-nearest with an MSE clip search (``w_method="rtn-mse"``; Q-DiT's ``quant_method="mse"``).

For every scale group of the balanced weight ``W'`` (per group of ``w_group_size`` input channels, per
output channel or per tensor, as the layer's weight quantizer says) the clipping range ``r · [min, max]``
(``r · absmax`` when symmetric) is searched over ``r = 1, 0.999, ..., 0.901`` (100 shrink steps of 0.001)
and the ``r`` minimising the ``L_2.4`` reconstruction error ``mean |W' - Ŵ'|^2.4`` of the group is kept
(the LAPQ norm Q-DiT uses). The range keeps containing 0 (the min-max convention of
:mod:`vidq_jax.quant.quantizers`). The result is an ordinary round-to-nearest
:class:`~vidq_jax.quant.record.QuantizedWeight` with the searched scales.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels import pack_int4  # the int4 storage layout (one packer, as in record.py)
from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.methods.rtn import quantize as rtn_quantize
from vidq_jax.quant.quantizers import QuantSpec, compute_qparams, dequantize, quantize_with_params
from vidq_jax.quant.record import QuantizedWeight, balanced_weight

CLIP_STEPS = 100
CLIP_STEP = 0.001
NORM_P = 2.4


def _grouped(x: jax.Array, spec: QuantSpec) -> jax.Array:
    """``x (N, K)`` as ``(N, G, g)`` ("group"), ``(N, 1, K)`` ("channel") or ``(1, 1, N·K)`` ("tensor")."""
    n, k = x.shape
    if spec.granularity == "group":
        return x.reshape(n, k // spec.group_size, spec.group_size)
    if spec.granularity == "tensor":
        return x.reshape(1, 1, n * k)
    return x.reshape(n, 1, k)


def _canonical(r: jax.Array, spec: QuantSpec) -> jax.Array:
    """A per-group reduction ``(N|1, G|1)`` in the canonical scale shape of ``spec``."""
    if spec.granularity == "group":
        return r
    if spec.granularity == "tensor":
        return r.reshape(())
    return r[:, 0]


@functools.partial(jax.jit, static_argnames=("spec", "steps"))
def clip_search(w: jax.Array, spec: QuantSpec, steps: int = CLIP_STEPS, step: float = CLIP_STEP,
                p: float = NORM_P) -> tuple[jax.Array, jax.Array | None]:
    """``(scale, zero_point)`` (canonical shapes of ``spec``) of ``w (N, K)`` minimising the per-group
    ``L_p`` error over the clip ratios ``1 - i·step``, ``i < steps`` (module docstring)."""
    w = w.astype(jnp.float32)
    v = _grouped(w, spec)
    if spec.symmetric:
        hi = jnp.max(jnp.abs(v), axis=-1, keepdims=True)
        lo = -hi
    else:
        hi = jnp.maximum(jnp.max(v, axis=-1, keepdims=True), 0.0)
        lo = jnp.minimum(jnp.min(v, axis=-1, keepdims=True), 0.0)

    def params(r):
        # the clipped tensor's extremes are exactly r·lo / r·hi: min-max parameters of the shrunk range
        return compute_qparams(jnp.clip(v, r * lo, r * hi).reshape(w.shape), spec)

    def loss(s, z):
        wh = dequantize(quantize_with_params(w, s, z, spec), s, z, spec)
        return _canonical(jnp.mean(jnp.abs(_grouped(wh - w, spec)) ** p, axis=-1), spec)

    s0, z0 = params(jnp.float32(1.0))
    best = (loss(s0, z0), s0, z0)

    def body(i, best):
        s, z = params(1.0 - i * step)
        err = loss(s, z)
        better = err < best[0]
        return (jnp.where(better, err, best[0]), jnp.where(better, s, best[1]),
                None if z is None else jnp.where(better, z, best[2]))

    _, scale, zp = jax.lax.fori_loop(1, steps, body, best)
    return scale, zp


def quantize(kernel: jax.Array, layer: LayerQuant, *, stats: Any = None, name: str = "", **balance: Any
             ) -> QuantizedWeight:
    """The record of one layer with MSE-searched weight scales (the method seam's arguments,
    :mod:`vidq_jax.quant.methods`; ``stats`` unused)."""
    del stats
    base = rtn_quantize(kernel, layer, name=name, **balance)
    spec = layer.weight_spec()
    w = balanced_weight(kernel, balance.get("smooth"), balance.get("hadamard_signs"))
    scale, zp = clip_search(w, spec)
    q = quantize_with_params(w, scale, zp, spec)
    return base.replace(qvalue=pack_int4(q) if layer.packed else q, scale=scale, zero_point=zp)


__all__ = ["CLIP_STEPS", "CLIP_STEP", "NORM_P", "clip_search", "quantize"]

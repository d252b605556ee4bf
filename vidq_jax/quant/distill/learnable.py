"""Learnable quantization of one Dense layer: the training-time twin of :class:`~vidq_jax.quant.tqe.TQEWeight`.

:class:`LearnableTQE` sits in the ``kernel`` leaf of a params tree while :func:`~vidq_jax.quant.distill.distill`
trains, and computes (fake quantization, float32)::

    W_eff = W' + (A · B)ᵀ                          rank-r LoRA inside the quantized weight (A (K, r), B (r, N))
    Ŵ     = (clip(⌊W_eff / s⌉ - z, qmin, qmax) + z) · s      learnable step sizes s, fixed zero points z
    x̂     = Q̂(x')                                   dynamic per-token quantize-dequantize of x' = (x / m) · R
    y     = x̂ · Ŵᵀ + b + (M_frame · x̂ · α) ⊗ β        the TQE branch of the inference record

Rounding is straight-through (:func:`straight_through`: the forward value is exactly the rounded one,
the backward pass is the identity), so ``s`` gets the LSQ gradient and the clip zeroes the gradient of
clipped weights; activations are straight-through as a whole. :meth:`LearnableTQE.fold` quantizes
``W_eff`` once with the learned ``s`` into the inference record, whose ``simulate`` output equals this
forward (same formulas, same rounding).

Initialisation (:func:`learnable_from`, the released code's): ``A`` Kaiming-uniform, ``B`` zero (so
``W_eff = W'`` and the record starts as the calibrated one), ``s`` / ``z`` / ``α`` / ``β`` / ``M`` from the
calibrated :class:`TQEWeight`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from models.layers import activate, split_columns
from vidq_jax.quant.methods.qvdit import requantized
from vidq_jax.quant.quantizers import QuantSpec, fake_quant
from vidq_jax.quant.record import QuantizedWeight, balanced_weight
from vidq_jax.quant.tqe import TQEWeight, frame_scaled

TRAINABLE: tuple[str, ...] = ("scale", "lora_a", "lora_b", "alpha", "beta", "frame_scale")
"""The leaves of :class:`LearnableTQE` the distillation trains (``scale``: step sizes; the others: LoRA
and the TQE branch)."""

_TINY = float(np.finfo(np.float32).tiny)


@jax.custom_vjp
def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
    """``y`` in the forward pass; in the backward pass the gradient goes to ``x`` as if the op were
    the identity (and none to ``y``): the straight-through estimator of ``y = round(x)`` or
    ``y = fake_quant(x)``, with the forward value exactly ``y``."""
    return y


straight_through.defvjp(lambda x, y: (y, None), lambda _, g: (g, None))


def step_sizes(scale: jax.Array) -> jax.Array:
    """Learned step sizes kept positive (a step size that training pushed below zero stops at the
    smallest normal float32)."""
    return jnp.maximum(scale, _TINY)


def _view(p: jax.Array, spec: QuantSpec) -> jax.Array:
    """Canonical scale/zero point → broadcastable against the weight viewed as ``(N, G, K // G)``."""
    if spec.granularity == "tensor":
        return jnp.reshape(p, (1, 1, 1))
    if spec.granularity == "group":
        return p[:, :, None]
    return p[:, None, None]


def fake_quant_weight(w: jax.Array, scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec) -> jax.Array:
    """Quantize-dequantize ``W (N, K)`` with given (learnable) step sizes, straight-through rounding;
    the forward value equals :func:`~vidq_jax.quant.quantizers.quantize_with_params` + ``dequantize``."""
    n, k = w.shape
    wv = w.reshape(n, spec.num_groups(k), -1)
    s = _view(step_sizes(scale), spec)
    v = wv / s
    q = straight_through(v, jax.lax.stop_gradient(jnp.round(v)))
    z = 0.0 if zero_point is None else _view(jnp.asarray(zero_point, jnp.int32), spec).astype(jnp.float32)
    q = jnp.clip(q - z, spec.qmin, spec.qmax)
    return ((q + z) * s).reshape(n, k)


@struct.dataclass
class LearnableTQE:
    """Training-time record of one quantized layer (module docstring). ``base``: the calibrated
    :class:`QuantizedWeight` (balance, zero points, settings; frozen); ``weight``: the float balanced
    weight ``W' (N, K)`` (frozen); the :data:`TRAINABLE` leaves."""

    base: QuantizedWeight
    weight: jax.Array
    scale: jax.Array
    lora_a: jax.Array
    lora_b: jax.Array
    alpha: jax.Array
    beta: jax.Array
    frame_scale: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    def trainable(self) -> dict[str, jax.Array]:
        """The :data:`TRAINABLE` leaves (``frame_scale`` only when the layer has one)."""
        return {n: getattr(self, n) for n in TRAINABLE if getattr(self, n) is not None}

    def effective_weight(self) -> jax.Array:
        """``W' + (A·B)ᵀ`` float32 ``(N, K)``: the weight that gets quantized."""
        return self.weight + jnp.matmul(self.lora_a, self.lora_b).T

    def quantized_dense(self, x: jax.Array, bias: jax.Array | None = None, dtype: Any = None,
                        activation: str | None = None, splits: int = 1) -> jax.Array | tuple[jax.Array, ...]:
        base = self.base
        lq = base.layer
        x = jnp.asarray(x)
        out_dtype = jnp.dtype(dtype) if dtype is not None else x.dtype
        k, n = base.in_features, base.out_features
        lead = x.shape[:-1]
        x2 = base.balance(x.reshape(-1, k).astype(jnp.float32))
        if lq.a_bits is not None:
            x2 = straight_through(x2, jax.lax.stop_gradient(fake_quant(x2, lq.act_spec())))
        w_hat = fake_quant_weight(self.effective_weight(), self.scale, base.zero_point, lq.weight_spec())
        y = jnp.matmul(x2, w_hat.T)
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        u = frame_scaled(jnp.matmul(x2, self.alpha), lead, self.frame_scale)
        y = y + u[:, None] * self.beta[None, :]
        return split_columns(activate(activation, y).astype(out_dtype).reshape(lead + (n,)), splits)

    def fold(self) -> TQEWeight:
        """The inference record: ``W' + (A·B)ᵀ`` quantized once with the learned step sizes, the branch
        as learned (the backend of the calibrated record)."""
        base = requantized(self.base, self.effective_weight(), step_sizes(self.scale), self.base.zero_point)
        return TQEWeight(base, self.alpha, self.beta, self.frame_scale)


def learnable_from(record: TQEWeight, kernel: jax.Array, rank: int, rng: np.random.Generator) -> LearnableTQE:
    """The training record of a calibrated :class:`TQEWeight` of the float ``kernel (K, N)``: LoRA of rank
    ``min(rank, K, N)``, ``A`` Kaiming-uniform ``U(±1/√K)`` (PyTorch ``nn.Linear``) drawn from ``rng``,
    ``B`` zero."""
    base = record.base
    k, n = base.in_features, base.out_features
    r = max(1, min(int(rank), k, n))
    bound = 1.0 / float(k) ** 0.5
    return LearnableTQE(
        base=base,
        weight=balanced_weight(kernel, base.smooth, base.hadamard_signs),
        scale=jnp.asarray(base.scale, jnp.float32),
        lora_a=jnp.asarray(rng.uniform(-bound, bound, (k, r)), jnp.float32),
        lora_b=jnp.zeros((r, n), jnp.float32),
        alpha=jnp.asarray(record.alpha, jnp.float32),
        beta=jnp.asarray(record.beta, jnp.float32),
        frame_scale=None if record.frame_scale is None else jnp.asarray(record.frame_scale, jnp.float32),
    )


__all__ = ["LearnableTQE", "TRAINABLE", "fake_quant_weight", "learnable_from", "step_sizes", "straight_through"]

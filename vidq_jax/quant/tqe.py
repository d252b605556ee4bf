"""Q-VDiT's token-aware quantization estimator (TQE): a quantized linear plus a rank-1 float branch.

A :class:`TQEWeight` is a Dense-seam record (DESIGN.md) wrapping a :class:`~vidq_jax.quant.record.QuantizedWeight`
``base`` with the compensation of Q-VDiT (viditq_method.md §10.1)::

    y = Q̂(x') · Ŵ'ᵀ + b + u ⊗ β,        u[m] = M[frame(m)] · (Q̂(x')[m] · α)

* ``x' = (x / s) · R`` and ``Ŵ'`` are the base record's balanced activation and dequantized weight;
  ``Q̂(x')`` its (dynamic) quantize-dequantize — the branch reads the same quantized activation as the
  GEMM, as in the released code, where the rank-1 weight is added to the quantized weight;
* ``α (K,)`` (in the balanced domain) and ``β (N,)``: the rank-1 estimate of the weight's quantization
  error, ``α`` Kaiming-initialised and ``β`` zero (the branch is off until distillation trains it);
* ``M (T,)`` (``frame_scale``, optional): one learnable scale per frame of frame-major video tokens
  ``(..., T·S, K)`` — the token-aware variant, on temporal-attention layers
  (:attr:`~vidq_jax.quant.config.LayerQuant.tqe_frames` frames).

At inference the branch costs one dot product per token (``u``, computed where the activation is
quantized) and a rank-1 epilogue term, added after the bias and before the layer's activation, then the
block's gated residual ``residual + gate · y``:

* ``simulate`` / ``xla``: ``u`` from the dequantized activation the backend quantized anyway, one
  broadcast multiply-add on the float32 output;
* ``pallas``: inside the kernels (:func:`vidq_jax.quant.backends.pallas_dense` ``rank1=``): the per-token
  quantizer kernel writes ``u = s_x · (q_x · α)`` (times ``M`` of the token's frame, passed as one float per
  token) next to its scale, and the GEMM epilogue (Mosaic GPU and Pallas-Triton, W8A8 and W4A8) adds
  ``u[m] · β[n]`` in float32 after the zero-point term, scales and bias, before the activation, the gated
  residual and the output cast. Activation, column splits and gated residual stay fused as for a plain
  :class:`~vidq_jax.quant.record.QuantizedWeight`; formats the kernels do not take fall back to ``xla``.

Records are built by the ``qvdit`` weight method (:mod:`vidq_jax.quant.methods.qvdit`) and trained by
:func:`vidq_jax.quant.distill.distill`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from models.layers import activate, add_residual, split_columns
from vidq_jax.quant.quantizers import dequantize
from vidq_jax.quant.record import QuantizedWeight, integer_linear, pallas_output

_HIGHEST = jax.lax.Precision.HIGHEST


def check_frames(lead: tuple[int, ...], frame_scale: jax.Array | None) -> None:
    """``ValueError`` unless the tokens per sample (``lead[-1]``) split into the frames of ``frame_scale``."""
    if frame_scale is None:
        return
    t = frame_scale.shape[0]
    if not lead or lead[-1] % t:
        raise ValueError(f"per-frame TQE scale over {t} frames: the layer input has {lead[-1] if lead else 0} "
                         f"tokens per sample, not a multiple of {t} (distilled for {t} latent frames)")


def frame_scaled(u: jax.Array, lead: tuple[int, ...], frame_scale: jax.Array | None) -> jax.Array:
    """``u`` (one value per token, flat over ``lead = (..., T·S)``) times the per-frame scale of each
    token's frame (frame-major tokens); ``frame_scale=None`` returns ``u``."""
    check_frames(lead, frame_scale)
    if frame_scale is None:
        return u
    t = frame_scale.shape[0]
    u = u.reshape(*lead[:-1], t, lead[-1] // t) * frame_scale.astype(u.dtype)[:, None]
    return u.reshape(-1)


@struct.dataclass
class TQEWeight:
    """A quantized Dense kernel with Q-VDiT's rank-1 compensation branch (module docstring).

    Leaves: ``base`` (:class:`QuantizedWeight`), ``alpha (K,)``, ``beta (N,)``, ``frame_scale (T,)`` or
    ``None`` — all float32 except the base record's integers."""

    base: QuantizedWeight
    alpha: jax.Array
    beta: jax.Array
    frame_scale: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def layer(self):
        return self.base.layer

    @property
    def backend(self) -> str:
        return self.base.backend

    def with_backend(self, backend: str) -> "TQEWeight":
        return self.replace(base=self.base.with_backend(backend))

    def rank1(self, lead: tuple[int, ...]) -> tuple[jax.Array, ...]:
        """The kernels' ``rank1`` operand for inputs ``lead + (K,)``: ``(alpha, beta)``, plus the per-token
        scale ``M[frame(m)]`` (one float per flattened token) on token-aware layers."""
        alpha, beta = self.alpha.astype(jnp.float32), self.beta.astype(jnp.float32)
        if self.frame_scale is None:
            return alpha, beta
        return alpha, beta, frame_scaled(jnp.ones((math.prod(lead),), jnp.float32), lead, self.frame_scale)

    def quantized_dense(self, x: jax.Array, bias: jax.Array | None = None, dtype: Any = None,
                        activation: str | None = None, splits: int = 1, residual: jax.Array | None = None,
                        gate: jax.Array | None = None) -> jax.Array | tuple[jax.Array, ...]:
        """``residual + gate · act(x·W + b + branch)`` for ``x (..., K)`` → ``(..., N)`` (``splits`` column
        blocks if > 1; ``residual`` / ``gate`` as :meth:`QuantizedWeight.quantized_dense` takes them)."""
        base = self.base
        x = jnp.asarray(x)
        out_dtype = jnp.dtype(dtype) if dtype is not None else x.dtype
        k, n = base.in_features, base.out_features
        if x.shape[-1] != k:
            raise ValueError(f"quantized Dense expects (..., {k}) input, got {x.shape}")
        if splits < 1 or n % splits:
            raise ValueError(f"{n} output features do not split into {splits} blocks")
        lead = x.shape[:-1]
        check_frames(lead, self.frame_scale)
        xr = x.reshape(-1, k)
        lq = base.layer
        if (lq.a_bits is not None and base.backend == "pallas" and not lq.fp8  # the branch inside the kernels
                and (y := pallas_output(base, xr, lead, bias, out_dtype, activation, splits, residual, gate,
                                        rank1=self.rank1(lead))) is not None):
            return y
        x2 = base.balance(xr.astype(jnp.float32))
        if lq.a_bits is None:
            x_hat = x2
            y = jnp.matmul(x2, base.dequantize().T, precision=_HIGHEST)
        else:
            spec = lq.act_spec()
            q, s, z = base.quantize_activation(x2)
            x_hat = dequantize(q, s, z, spec)
            if base.backend == "simulate":
                y = jnp.matmul(x_hat, base.dequantize().T, precision=_HIGHEST)
            else:
                y = integer_linear(q, s, z, spec, base.int_weight(), base.scale, base.zero_point, lq.weight_spec())
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        u = frame_scaled(jnp.matmul(x_hat, self.alpha.astype(jnp.float32), precision=_HIGHEST), lead, self.frame_scale)
        y = y.astype(jnp.float32) + u[:, None] * self.beta.astype(jnp.float32)[None, :]
        y = split_columns(activate(activation, y).astype(out_dtype).reshape(lead + (n,)), splits)
        return add_residual(y, residual, gate)


def init_branch(key: jax.Array, in_features: int, out_features: int, frames: int | None = None
                ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``(alpha, beta, frame_scale)`` as the released code initialises them: ``alpha`` Kaiming-uniform
    (``U(±1/√K)``, PyTorch's ``nn.Linear`` default), ``beta`` zero, ``frame_scale`` ones (``frames``
    given) — the paper's saliency initialisation of ``M`` is
    :func:`vidq_jax.quant.distill.saliency_frame_scales`."""
    bound = 1.0 / float(in_features) ** 0.5
    alpha = jax.random.uniform(key, (in_features,), jnp.float32, -bound, bound)
    beta = jnp.zeros((out_features,), jnp.float32)
    return alpha, beta, None if frames is None else jnp.ones((frames,), jnp.float32)


__all__ = ["TQEWeight", "check_frames", "frame_scaled", "init_branch"]

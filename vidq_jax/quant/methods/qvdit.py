"""Q-VDiT's weight method (``w_method="qvdit"``): a clip-searched quantized weight plus the TQE branch.

Calibration-only, this is round-to-nearest with the released code's ``grid_search_lp`` scale (per scale
group, the clipping ratio of the min-max range with the least squared weight error) and a rank-1
branch that is still zero (:func:`vidq_jax.quant.tqe.init_branch`): the record computes what the
clipped RTN weight computes. :func:`vidq_jax.quant.distill.distill` starts from these records, learns
LoRA, step sizes and the branch, and folds the result into records of the same structure
(:func:`requantized`), so a distilled folder restores through :func:`record_template`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels import pack_int4  # the int4 storage layout (one packer, as in record.py)
from vidq_jax.quant.balance import layer_key
from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.methods.mse import clip_search
from vidq_jax.quant.methods.rtn import record_template as rtn_template
from vidq_jax.quant.quantizers import quantize_with_params
from vidq_jax.quant.record import QuantizedWeight, balanced_weight, quantize_weight
from vidq_jax.quant.tqe import TQEWeight, init_branch

# the released code's grid_search_lp: clip ratios 1.00, 0.98, ..., 0.30 of the min-max range, L2 error
CLIP_STEPS, CLIP_STEP, CLIP_NORM = 36, 0.02, 2.0


def requantized(base: QuantizedWeight, w_bal: jax.Array, scale: jax.Array, zero_point: jax.Array | None
                ) -> QuantizedWeight:
    """``base`` holding the balanced weight ``W' (N, K)`` quantized ONCE with the given ``scale`` /
    ``zero_point`` (canonical shapes of its weight spec); balance and activation fields unchanged."""
    layer = base.layer
    q = quantize_with_params(w_bal, scale, zero_point, layer.weight_spec())
    return base.replace(qvalue=pack_int4(q) if layer.packed else q, scale=jnp.asarray(scale, jnp.float32),
                        zero_point=None if zero_point is None else jnp.asarray(zero_point, jnp.int32))


@functools.partial(jax.jit, static_argnames=("layer",))
def _quantize(kernel, layer, smooth, hadamard_signs, act_scale, act_zero_point, key) -> TQEWeight:
    base = quantize_weight(kernel, layer, smooth=smooth, hadamard_signs=hadamard_signs, act_scale=act_scale,
                           act_zero_point=act_zero_point)
    w_bal = balanced_weight(kernel, base.smooth, base.hadamard_signs)
    scale, zp = clip_search(w_bal, layer.weight_spec(), CLIP_STEPS, CLIP_STEP, CLIP_NORM)
    k, n = kernel.shape
    alpha, beta, frames = init_branch(key, k, n, layer.tqe_frames)
    return TQEWeight(requantized(base, w_bal, scale, zp), alpha, beta, frames)


def quantize(kernel: jax.Array, layer: LayerQuant, *, smooth: jax.Array | None = None,
             hadamard_signs: jax.Array | None = None, stats: Any = None, act_scale: jax.Array | None = None,
             act_zero_point: jax.Array | None = None, name: str = "") -> TQEWeight:
    """The calibration-only Q-VDiT record of one layer (module docstring); ``alpha`` is drawn from the
    layer path (:func:`vidq_jax.quant.balance.layer_key`), so a run is reproducible. One compilation per
    distinct (kernel shape, settings)."""
    del stats
    layer.check_in_features(int(jnp.shape(kernel)[0]), name)  # a clear error naming the layer, before tracing
    return _quantize(kernel, layer, smooth, hadamard_signs, act_scale, act_zero_point, layer_key(0, name))


def record_template(kernel_shape: tuple[int, int], lq: LayerQuant, where: str = "") -> TQEWeight:
    """Abstract :class:`TQEWeight` (``jax.ShapeDtypeStruct`` leaves) of a ``(K, N)`` kernel."""
    k, n = kernel_shape
    f32 = jnp.float32
    frames = None if lq.tqe_frames is None else jax.ShapeDtypeStruct((lq.tqe_frames,), f32)
    return TQEWeight(rtn_template(kernel_shape, lq, where), jax.ShapeDtypeStruct((k,), f32),
                     jax.ShapeDtypeStruct((n,), f32), frames)


__all__ = ["CLIP_NORM", "CLIP_STEP", "CLIP_STEPS", "quantize", "record_template", "requantized"]

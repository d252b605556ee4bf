"""Round-to-nearest weight quantization (``w_method="rtn"``, ViDiT-Q's): the balanced weight
``W' = (W · diag(s))ᵀ · R`` quantized once by the layer's min-max quantizer
(:func:`vidq_jax.quant.record.quantize_weight`) into a :class:`~vidq_jax.quant.record.QuantizedWeight`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.record import QuantizedWeight, quantize_weight

# One XLA compile per distinct (shape, LayerQuant) — the 28 blocks of a DiT share a handful — instead
# of one compile per eager op.
_quantize_weight_jit = jax.jit(quantize_weight, static_argnames=("layer", "name"))


def quantize(
    kernel: jax.Array,
    layer: LayerQuant,
    *,
    smooth: jax.Array | None = None,
    hadamard_signs: jax.Array | None = None,
    stats: Any = None,
    act_scale: jax.Array | None = None,
    act_zero_point: jax.Array | None = None,
    name: str = "",
) -> QuantizedWeight:
    """The RTN record of one layer (``stats`` unused: min-max needs only the weight)."""
    del stats
    layer.check_in_features(kernel.shape[0], name)  # clear error naming the layer, before tracing
    return _quantize_weight_jit(
        kernel, layer, smooth=smooth, hadamard_signs=hadamard_signs, act_scale=act_scale,
        act_zero_point=act_zero_point, name="",
    )


def record_template(kernel_shape: tuple[int, int], lq: LayerQuant, where: str = "") -> QuantizedWeight:
    """Abstract :class:`QuantizedWeight` (``jax.ShapeDtypeStruct`` leaves) of a ``(K, N)`` kernel."""
    k = kernel_shape[0]
    f32 = jnp.float32
    vec = jax.ShapeDtypeStruct((k,), f32)
    scalar = jax.ShapeDtypeStruct((), f32)
    args = (
        jax.ShapeDtypeStruct(tuple(kernel_shape), f32),
        vec if lq.smooth_alpha is not None else None,
        vec if lq.rotate else None,
        scalar if lq.a_static else None,
        jax.ShapeDtypeStruct((), jnp.int32) if lq.a_static and not lq.a_symmetric else None,
    )
    lq.check_in_features(k, where)
    return jax.eval_shape(
        lambda w, s, h, a, z: quantize_weight(w, lq, smooth=s, hadamard_signs=h, act_scale=a, act_zero_point=z), *args
    )


__all__ = ["quantize", "record_template"]

"""Weight quantization methods by name (the method seam of DESIGN.md).

``LayerQuant.w_method`` names an entry of :data:`WEIGHT_METHODS`;
:func:`vidq_jax.quant.api.build_records` calls that method for every selected layer. A method is a
:class:`WeightMethod`:

* ``quantize(kernel, layer, *, smooth, hadamard_signs, stats, act_scale, act_zero_point, name)
  -> record`` gets the float Flax ``kernel (K, N)``, the layer's :class:`~vidq_jax.quant.config.LayerQuant`,
  its balance (smoothing vector ``s (K,)`` and Hadamard signs ``(K,)``, each ``None`` when unused;
  apply them as :func:`vidq_jax.quant.record.quantize_weight` does), the layer's calibration
  statistics (:class:`~vidq_jax.quant.stats.LayerStats`, ``None`` when the layer needed none),
  the calibrated static activation scale / zero point (``layer.a_static``) and the layer path for
  errors, and returns the quantized record;
* ``template(kernel_shape, layer, where) -> record`` gives the record's abstract structure
  (``jax.ShapeDtypeStruct`` leaves): the restore target of saved quantized params;
* ``statistics``: the calibration statistics the method needs beyond the balancing's
  (names in :data:`vidq_jax.quant.stats.STATISTICS`, e.g. ``("hessian",)`` for GPTQ);
* ``sequential``: the statistics must be taken with the layers that run before this one already
  quantized (GPTQ); :mod:`vidq_jax.quant.sequential` then quantizes the model stage by stage.

A new method (Q-DiT's GPTQ, a distilled Q-VDiT method) is one module here plus one entry in
:data:`WEIGHT_METHODS`.

Records: a method may return a new record kind. Anything that is a pytree (e.g. a
``flax.struct.dataclass``) with ``shape`` and a method ``quantized_dense(x, bias, dtype[, activation]
[, splits]) -> y`` plugs into ``models.layers.Dense`` as the ``kernel`` leaf, the way
:class:`~vidq_jax.quant.record.QuantizedWeight` and :class:`~vidq_jax.quant.segmented.SegmentedWeight`
do (Dense applies the activation / splits the output itself when the method does not take those
keywords); nothing changes in the models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vidq_jax.quant.methods import gptq, mse, rtn
from vidq_jax.quant.methods import qvdit  # Q-VDiT (after rtn/mse, which it reuses)


@dataclasses.dataclass(frozen=True)
class WeightMethod:
    """A weight quantization method (module docstring)."""

    name: str
    quantize: Callable[..., Any]
    template: Callable[..., Any]
    statistics: tuple[str, ...] = ()
    sequential: bool = False


WEIGHT_METHODS: dict[str, WeightMethod] = {
    "rtn": WeightMethod("rtn", rtn.quantize, rtn.record_template),
    "rtn-mse": WeightMethod("rtn-mse", mse.quantize, rtn.record_template),
    "gptq": WeightMethod("gptq", gptq.quantize, rtn.record_template, ("hessian",), sequential=True),
    # Q-VDiT: clip-searched weight + rank-1 TQE branch (zero until vidq_jax.quant.distill trains it)
    "qvdit": WeightMethod("qvdit", qvdit.quantize, qvdit.record_template),
}
"""Weight quantization methods by name (``LayerQuant.w_method``)."""


def weight_method(name: str, where: str = "") -> WeightMethod:
    """The registered method ``name``; ``ValueError`` naming the layer ``where`` otherwise."""
    method = WEIGHT_METHODS.get(name)
    if method is None:
        loc = f"layer {where!r}: " if where else ""
        raise ValueError(f"{loc}unknown weight quantization method w_method={name!r}; available: {sorted(WEIGHT_METHODS)}")
    return method


def layer_statistics(layer: Any, where: str = "") -> tuple[str, ...]:
    """Calibration statistics a layer needs: ``"absmax"`` for smoothing / static activation scales,
    plus its weight method's."""
    own = ("absmax",) if layer.needs_calibration else ()
    return tuple(dict.fromkeys(own + weight_method(layer.w_method, where).statistics))


__all__ = ["WEIGHT_METHODS", "WeightMethod", "layer_statistics", "weight_method"]

"""vidq-jax: ViDiT-Q quantization of diffusion transformers in JAX/Flax.

The public quantization API is importable from the top level; the names are resolved lazily
(PEP 562), so ``import vidq_jax`` stays light (no JAX compile, no torch):

* :func:`quantize_params` (``quantize_params(params, calib_batches)`` with batches of
  :func:`collect_calibration` quantizes with the ``viditq-w8a8`` preset; ``plan=`` for timestep-segment
  mixed precision), :class:`QuantConfig`, :class:`LayerQuant`, :class:`LayerRule`,
  :class:`QuantizedWeight` — :mod:`vidq_jax.quant`;
* :class:`MixedPrecisionPlan`, :class:`BitsRule` — :mod:`vidq_jax.quant.plan`;
* :func:`collect_calibration` (= :func:`vidq_jax.calibration.collect`);
* :func:`distill` (= :func:`vidq_jax.quant.distill.distill`: Q-VDiT's learned quantization);
* :func:`load` (= :func:`vidq_jax.checkpoint.load_model`: ``(model, params, meta)`` of a float or
  quantized model folder), :func:`load_quantized`, :func:`save_quantized` — :mod:`vidq_jax.checkpoint`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "quantize_params": ("vidq_jax.quant", "quantize_params"),
    "QuantConfig": ("vidq_jax.quant", "QuantConfig"),
    "LayerQuant": ("vidq_jax.quant", "LayerQuant"),
    "LayerRule": ("vidq_jax.quant", "LayerRule"),
    "QuantizedWeight": ("vidq_jax.quant", "QuantizedWeight"),
    "MixedPrecisionPlan": ("vidq_jax.quant.plan", "MixedPrecisionPlan"),
    "BitsRule": ("vidq_jax.quant.plan", "BitsRule"),
    "collect_calibration": ("vidq_jax.calibration", "collect"),
    "load": ("vidq_jax.checkpoint", "load_model"),
    "load_quantized": ("vidq_jax.checkpoint", "load_quantized"),
    "save_quantized": ("vidq_jax.checkpoint", "save_quantized"),
    "distill": ("vidq_jax.quant.distill", "distill"),  # Q-VDiT distillation
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vidq_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))

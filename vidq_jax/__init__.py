"""vidq-jax: ViDiT-Q quantization of diffusion transformers in JAX/Flax.

The public quantization API is importable from the top level; the names are resolved lazily
(PEP 562), so ``import vidq_jax`` stays light (no JAX compile, no torch):

* :func:`quantize_params`, :class:`QuantConfig`, :class:`LayerQuant`, :class:`LayerRule`,
  :class:`QuantizedWeight` — :mod:`vidq_jax.quant`;
* :func:`quantize_params_mp`, :class:`MixedPrecisionPlan`, :class:`BitsRule` —
  :mod:`vidq_jax.quant.mixed_precision`;
* :func:`collect_calibration` (= :func:`vidq_jax.calibration.collect`);
* :func:`load_quantized`, :func:`save_quantized` — :mod:`vidq_jax.quant.io`.
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
    "quantize_params_mp": ("vidq_jax.quant.mixed_precision", "quantize_params_mp"),
    "MixedPrecisionPlan": ("vidq_jax.quant.mixed_precision", "MixedPrecisionPlan"),
    "BitsRule": ("vidq_jax.quant.mixed_precision", "BitsRule"),
    "collect_calibration": ("vidq_jax.calibration", "collect"),
    "load_quantized": ("vidq_jax.quant.io", "load_quantized"),
    "save_quantized": ("vidq_jax.quant.io", "save_quantized"),
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

"""The quantization recipe of a quantized model folder, and the restore target it determines.

A quantized folder is a :mod:`vidq_jax.checkpoint` model folder (orbax; int8/uint8 payloads stay
integer on disk) whose ``model.json`` carries ``"quantization": {"config": QuantConfig.to_dict(),
"plan": MixedPrecisionPlan.to_dict() | null, "preset": name | null}`` (:func:`quantization_entry`).
:func:`quantized_target` rebuilds the restore target from it (the float parameter shapes come from
``jax.eval_shape(model.init, ...)``, so no float checkpoint is needed); the one loader
:func:`vidq_jax.checkpoint.load_model` uses it, :func:`vidq_jax.checkpoint.save_quantized` writes the entry.
"""

from __future__ import annotations

from typing import Any

import jax

from vidq_jax.quant.config import QuantConfig
from vidq_jax.quant.plan import MixedPrecisionPlan


def quantization_entry(config: QuantConfig, plan: MixedPrecisionPlan | None = None, preset: str | None = None) -> dict:
    """The ``"quantization"`` entry of ``model.json`` for params quantized with ``config`` (and ``plan``)."""
    return {"config": config.to_dict(), "plan": None if plan is None else plan.to_dict(), "preset": preset}


def abstract_params(model) -> Any:
    """``jax.ShapeDtypeStruct`` float params of ``model`` (from ``model.init_inputs()``; no compute)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **model.init_inputs()))["params"]


def quantized_target(model, meta: dict) -> Any:
    """Restore target of a quantized folder from its ``model.json`` ``meta``."""
    from vidq_jax.quant.api import quantized_params_template

    q = meta.get("quantization")
    if not q:
        raise ValueError("model.json has no 'quantization' entry: not a quantized model folder")
    config = QuantConfig.from_dict(q["config"])
    plan = MixedPrecisionPlan.from_dict(q["plan"]) if q.get("plan") else None
    return quantized_params_template(abstract_params(model), config, plan, model=model)


__all__ = ["abstract_params", "quantization_entry", "quantized_target"]

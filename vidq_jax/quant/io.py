"""Quantized model folders: save (orbax; int8/uint8 payloads stay integer on disk) and load back.

A quantized folder is a :func:`vidq_jax.checkpoint.save_model` folder whose ``model.json`` carries
``"quantization": {"config": QuantConfig.to_dict(), "plan": MixedPrecisionPlan.to_dict() | null,
"preset": name | null}``. :func:`quantized_target` rebuilds the restore target from it (the float
parameter shapes come from ``jax.eval_shape(model.init, ...)``, so no float checkpoint is needed),
and :func:`load_quantized` restores ``(model, qparams, meta)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from vidq_jax.quant.config import QuantConfig
from vidq_jax.quant.mixed_precision import MixedPrecisionPlan


def save_quantized(out_dir: str | os.PathLike, model, qparams: Any, *, arch: str, config: QuantConfig,
                   plan: MixedPrecisionPlan | None = None, preset: str | None = None,
                   extra: dict | None = None) -> Path:
    """:func:`vidq_jax.checkpoint.save_model` plus the quantization recipe in ``model.json``."""
    from vidq_jax.checkpoint import save_model

    q = {"config": config.to_dict(), "plan": None if plan is None else plan.to_dict(), "preset": preset}
    return save_model(out_dir, model, qparams, arch=arch, extra={**(extra or {}), "quantization": q})


def abstract_params(model) -> Any:
    """``jax.ShapeDtypeStruct`` float params of ``model`` (from ``model.init_inputs()``; no compute)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **model.init_inputs()))["params"]


def quantized_target(model, meta: dict) -> Any:
    """Restore target of a quantized folder from its ``model.json`` ``meta``."""
    from vidq_jax.quant.api import quantized_params_template
    from vidq_jax.quant.mixed_precision import quantized_params_template_mp

    q = meta.get("quantization")
    if not q:
        raise ValueError("model.json has no 'quantization' entry: not a quantized model folder")
    config = QuantConfig.from_dict(q["config"])
    abstract = abstract_params(model)
    if q.get("plan"):
        return quantized_params_template_mp(abstract, config, MixedPrecisionPlan.from_dict(q["plan"]))
    return quantized_params_template(abstract, config)


def load_quantized(model_dir: str | os.PathLike, **module_kwargs: Any) -> tuple[Any, Any, dict]:
    """``(model, qparams, meta)`` of a folder written by :func:`save_quantized` (or ``vidq quantize``)."""
    import json

    from models import build_model
    from vidq_jax.checkpoint import load_model

    meta = json.loads((Path(model_dir) / "model.json").read_text())
    model = build_model(meta["model"], meta["config"], **module_kwargs)
    return load_model(model_dir, target=quantized_target(model, meta), **module_kwargs)


def disk_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every file under ``folder`` (what the checkpoint really occupies)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


__all__ = ["abstract_params", "disk_bytes", "load_quantized", "quantized_target", "save_quantized"]

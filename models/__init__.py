"""Flax ports of PixArt-α/Σ, Open-Sora STDiT (1.0) and STDiT3 (1.2).

``build_model(name, config_dict, dtype=...)`` rebuilds a module from its class name and the config
dict saved next to converted/quantized params (see ``vidq_jax.checkpoint``).
"""

from __future__ import annotations

import importlib
from typing import Any

# model class name -> (module, class, config class)
MODEL_CLASSES: dict[str, tuple[str, str, str]] = {
    "PixArt": ("models.pixart", "PixArt", "PixArtConfig"),
    "STDiT": ("models.stdit", "STDiT", "STDiTConfig"),
    "STDiT3": ("models.stdit3", "STDiT3", "STDiT3Config"),
}


def build_model(name: str, config: dict, **module_kwargs: Any):
    """Instantiate model class ``name`` from a config dict (as written by ``config.to_dict()``)."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(MODEL_CLASSES)}")
    mod_name, cls_name, cfg_name = MODEL_CLASSES[name]
    mod = importlib.import_module(mod_name)
    cfg_cls = getattr(mod, cfg_name)
    return getattr(mod, cls_name)(cfg_cls.from_dict(config), **module_kwargs)

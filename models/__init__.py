"""Flax ports of PixArt-α/Σ, Open-Sora STDiT (1.0) and STDiT3 (1.2).

Every family is declared once in :mod:`models.families` (module, config, archs, sampler, layer groups).
``build_model(name, config_dict, dtype=...)`` rebuilds a module from its family name (or the module
class name older ``model.json`` files store) and the config dict saved next to converted/quantized
params (see ``vidq_jax.checkpoint``).
"""

from __future__ import annotations

from typing import Any

from models.families import COMPONENTS, FAMILIES, Family, family_named, family_of


def build_model(name: str, config: dict, **module_kwargs: Any):
    """Instantiate the model of family ``name`` from a config dict (as written by ``config.to_dict()``);
    ``name`` may also be a component's (autoencoder, text encoder) name or module class name."""
    component = next((c for c in COMPONENTS.values() if name in (c.name, c.module.__name__)), None)
    return (component or family_named(name)).build(config, **module_kwargs)


__all__ = ["FAMILIES", "Family", "build_model", "family_named", "family_of"]

"""PyTorch checkpoints of PixArt-α/Σ and Open-Sora STDiT/STDiT3 → Flax models and params.

    from conversion import load_checkpoint
    model, params = load_checkpoint("PixArt-XL-2-1024-MS.pth", arch="pixart-alpha")
    out = model.apply({"params": params}, x, t, y, mask, img_hw=..., aspect_ratio=...)

Reading ``.pth`` needs torch (the ``[torch]`` extra); ``.safetensors`` and diffusers folders do not.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from conversion.errors import ConversionError
from conversion.io import read_state_dict

# arch name -> (module, function, extra positional args)
_ARCHS: dict[str, tuple[str, str, tuple]] = {
    "pixart-alpha": ("conversion.pixart", "convert_original", ("pixart-alpha",)),
    "pixart-sigma": ("conversion.pixart", "convert_original", ("pixart-sigma",)),
    "pixart-diffusers": ("conversion.pixart", "convert_diffusers", ()),
    "stdit": ("conversion.stdit", "convert_stdit", ()),
    "stdit3": ("conversion.stdit", "convert_stdit3", ()),
}

ARCHS = tuple(_ARCHS)


def _converter(arch: str):
    if arch not in _ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    module, fn, extra = _ARCHS[arch]
    try:
        mod = importlib.import_module(module)
        func = getattr(mod, fn)
    except (ImportError, AttributeError) as e:
        raise NotImplementedError(f"arch {arch!r} is not implemented yet ({e})") from None
    return lambda state, config, source: func(state, *extra, config, source)


def is_implemented(arch: str) -> bool:
    try:
        _converter(arch)
    except NotImplementedError:
        return False
    return True


def convert_state_dict(state: dict, arch: str, config: dict | None = None, source: str = "state dict"):
    """Convert an in-memory ``{key: numpy array}`` state dict; returns ``(model, numpy params)``."""
    return _converter(arch)(state, config, source)


def load_checkpoint(
    path: str | os.PathLike, arch: str, config: dict | None = None, *, dtype: Any = None
) -> tuple[Any, dict]:
    """Load a checkpoint file or folder as ``(flax_module, params)``.

    ``config`` overrides/completes what the shapes and any ``config.json`` say (original constructor
    names are accepted). ``dtype`` casts the params (e.g. ``jnp.bfloat16``); by default they keep the
    checkpoint's dtype. Raises :class:`ConversionError` naming every missing, unexpected and
    mis-shaped key, or naming the file when it is not a readable checkpoint.
    """
    from conversion.common import to_jax

    convert = _converter(arch)
    state, file_config, weights = read_state_dict(path)
    merged = dict(file_config or {})
    merged.update(config or {})
    model, params = convert(state, merged or None, str(weights))
    return model, to_jax(params, dtype)


__all__ = ["ARCHS", "ConversionError", "convert_state_dict", "is_implemented", "load_checkpoint", "read_state_dict"]

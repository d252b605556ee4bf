"""PyTorch checkpoints of the model families (:mod:`models.families`) → Flax models and params.

    from conversion import load_checkpoint
    model, params = load_checkpoint("PixArt-XL-2-1024-MS.pth", arch="pixart-alpha")
    out = model.apply({"params": params}, x, t, y, mask, img_hw=..., aspect_ratio=...)

The archs (``--arch`` names) are those the families declare; each family has one converter here,
``CONVERTERS[family] = convert(state, arch, config, source) -> (model, numpy params)``.
Reading ``.pth`` needs torch (the ``[torch]`` extra); ``.safetensors`` and diffusers folders do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from conversion import dit, pixart, stdit
from conversion import t5
from conversion import vae
from conversion.common import to_jax
from conversion.errors import ConversionError, ConversionWarning
from conversion.io import read_state_dict
from models.families import ARCHS as _FAMILY_OF_ARCH
from models.families import COMPONENT_ARCHS as _COMPONENT_OF_ARCH
from models.families import COMPONENTS, FAMILIES

# family / component name -> its converter (one each; every family and component of models.families has one, tested)
CONVERTERS: dict[str, Callable[..., tuple[Any, dict]]] = {
    "pixart": pixart.convert,
    "stdit": stdit.convert_stdit,
    "stdit3": stdit.convert_stdit3,
    "dit": dit.convert,
    "t5": t5.convert,
    "sd-vae": vae.convert_sd_vae,
    "opensora-vae": vae.convert_opensora_vae,
}

_OWNER_OF_ARCH = {**_FAMILY_OF_ARCH, **_COMPONENT_OF_ARCH}
ARCHS: tuple[str, ...] = tuple(a for a, owner in _OWNER_OF_ARCH.items() if owner.name in CONVERTERS)


def _converter(arch: str):
    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return CONVERTERS[_OWNER_OF_ARCH[arch].name]


def _is_tensor(v: Any) -> bool:
    """A numeric array (numpy numbers, bool, or ml_dtypes' bfloat16 / float8) with no empty axis."""
    if not (hasattr(v, "shape") and hasattr(v, "dtype")) or 0 in tuple(v.shape):
        return False
    dt = np.dtype(v.dtype)
    return dt.kind in "biufc" or (dt.kind == "V" and dt.names is None and dt.itemsize in (1, 2))


def _check_tensors(state: dict, source: str) -> None:
    """Every value is a numeric array with no empty axis (one-line error naming the first few that
    are not): what the converters' shape inference may rely on."""
    bad = [k for k, v in state.items() if not isinstance(k, str) or not _is_tensor(v)]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ConversionError(f"{source}: {len(bad)} entries are not numeric tensors with a non-empty shape: {shown}")


def is_implemented(arch: str) -> bool:
    """Whether checkpoints of ``arch`` can be converted here. Archs of families still to come (e.g.
    fixture cases for ``dit`` or ``sd-vae``) are simply not implemented: ``False``, never an error."""
    return arch in ARCHS


def convert_state_dict(state: dict, arch: str, config: dict | None = None, source: str = "state dict"):
    """Convert an in-memory ``{key: numpy array}`` state dict; returns ``(model, numpy params)``."""
    convert = _converter(arch)
    _check_tensors(state, source)
    return convert(state, arch, config, source)


def load_checkpoint(
    path: str | os.PathLike, arch: str, config: dict | None = None, *, dtype: Any = None
) -> tuple[Any, dict]:
    """Load a checkpoint file or folder as ``(flax_module, params)``.

    ``config`` overrides/completes what the shapes and any ``config.json`` say (original constructor
    names are accepted). ``dtype`` casts the params (e.g. ``jnp.bfloat16``); by default they keep the
    checkpoint's dtype. Raises :class:`ConversionError` naming every missing, unexpected and
    mis-shaped key, or naming the file when it is not a readable checkpoint.
    """
    convert = _converter(arch)
    state, file_config, weights = read_state_dict(path)
    _check_tensors(state, str(weights))
    merged = dict(file_config or {})
    merged.update(config or {})
    model, params = convert(state, arch, merged or None, str(weights))
    return model, to_jax(params, dtype)


__all__ = [
    "ARCHS",
    "COMPONENTS",
    "CONVERTERS",
    "ConversionError",
    "ConversionWarning",
    "FAMILIES",
    "convert_state_dict",
    "is_implemented",
    "load_checkpoint",
    "read_state_dict",
]

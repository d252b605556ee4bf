"""The package's one environment variable: a debug override of the kernels' keyword options.

The kernels' choices are keyword arguments of the public functions (``act_quant``,
``approx_gelu``, ``fuse_activation``). ``$PALLAS_KERNELS_DEBUG`` forces some of them for a whole
process, for A/B runs of code whose call sites one cannot edit (a whole model traced through
``vidq_jax``)::

    PALLAS_KERNELS_DEBUG="act_quant=xla,approx_gelu=0,fuse_activation=0"

* ``act_quant=auto|xla|triton`` — the per-token quantizer in front of the Pallas GEMMs;
* ``approx_gelu=0|1`` — Mosaic GPU epilogue GELU with ``approx_math`` (``tanh.approx``) or exact;
* ``fuse_activation=0|1`` — epilogue activation inside the Mosaic GEMM, or an XLA pass after it;
* ``fuse_producer=0|1`` — a rotated GEMM input's producer (smoothing, LayerNorm + adaLN modulate)
  inside the rotating quantizer, or an XLA pass before it (``w8a8_linear`` ``smooth=``/``prenorm=``);
* ``fuse_splits=0|1`` — a split linear's column blocks (fused qkv) written by one Mosaic GEMM, or one GEMM per
  block;
* ``gemm_tiles=stored|default`` — the Mosaic GEMMs' tilings from this GPU's rows of ``configs.json`` (normal), or
  from its ``"default"`` rows only (the A/B of a tile sweep).

It is read at trace time (set it before the first call is traced: a jitted function keeps what it
traced), overrides the arguments' values, explicit ones included, and says so once per process
(log + ``RuntimeWarning``). Unset (the normal case) it changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

from pallas_kernels._compat import log_once

DEBUG_ENV = "PALLAS_KERNELS_DEBUG"

_CHOICES: dict[str, dict[str, Any]] = {
    "act_quant": {"auto": "auto", "xla": "xla", "triton": "triton"},
    "approx_gelu": {"0": False, "1": True},
    "fuse_activation": {"0": False, "1": True},
    "fuse_producer": {"0": False, "1": True},
    "fuse_splits": {"0": False, "1": True},
    "gemm_tiles": {"stored": "stored", "default": "default"},
}


def parse_debug(raw: str) -> dict[str, Any]:
    """``"name=value,..."`` -> ``{name: value}`` (values converted; unknown names/values raise)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in _CHOICES or value not in _CHOICES[name]:
            expected = "; ".join(f"{n}={'|'.join(c)}" for n, c in _CHOICES.items())
            raise ValueError(f"${DEBUG_ENV}: cannot read {item!r}; expected a comma list of {expected}")
        out[name] = _CHOICES[name][value]
    return out


def debug_override(name: str, value: Any) -> Any:
    """``value``, unless ``$PALLAS_KERNELS_DEBUG`` sets ``name`` (then its value, logged once)."""
    options = parse_debug(os.environ.get(DEBUG_ENV, ""))
    if name not in options:
        return value
    log_once(f"{DEBUG_ENV}:{name}={options[name]}", f"pallas_kernels: ${DEBUG_ENV} forces {name}={options[name]!r}")
    return options[name]

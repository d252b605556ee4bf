"""Argument checks at the sampling API boundary (the samplers, :func:`vidq_jax.pipeline.sample`,
:func:`vidq_jax.calibration.collect`): a bad argument is a one-line :class:`SamplingArgumentError`
naming it and its allowed range, never a NaN result or an error from deep inside the traced model.

Value checks (NaN/Inf, signs) run on CONCRETE arrays only: under ``jax.jit`` tracing the inputs are
tracers and only their shapes are checked (nothing here branches on a traced value).

Allowed ranges:

* ``steps``: an integer >= 1 (at most the 1000 training timesteps for the discrete-time samplers;
  DPM-Solver's ``"diffusers"`` grid at most 999, beyond which its timesteps repeat).
* ``guidance_scale``: a number in ``[-1000, 1000]`` (:data:`MAX_GUIDANCE`). ``1`` = the conditional
  model alone (no CFG pass), ``0`` = the unconditional model alone, ``> 1`` = the usual guidance
  (the releases use 4.5-7), ``< 0`` guides AWAY from the prompt (allowed: it is well defined and used
  in negative-guidance experiments). Larger magnitudes are never useful and let float32 sampling
  overflow to Inf/NaN.
* ``noise``: a real ``(B, H, W, C)`` or ``(B, T, H, W, C)`` latent with no empty axis and, when
  concrete, only finite values.
* ``cond`` / ``uncond``: ``y`` has exactly ``B`` rows; every other batched condition has ``B`` rows
  or a divisor of ``B`` (tiled: the model convention of ``mask`` and per-row extras); ``uncond``
  leaves have as many rows as the matching ``cond`` leaves. Concrete float conditions are finite;
  the size / rate conditions of the model-call convention (:data:`POSITIVE_CONDITIONS`) are > 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.errors import VidqError

__all__ = ["MAX_GUIDANCE", "POSITIVE_CONDITIONS", "SamplingArgumentError", "check_conditions", "check_finite",
           "check_guidance", "check_int", "check_noise", "check_positive", "check_steps", "is_traced"]

MAX_GUIDANCE = 1000.0  # |guidance_scale| allowed (module docstring)

# Model keyword conditions that are sizes or rates (DESIGN.md "Model call convention"): must be > 0.
POSITIVE_CONDITIONS = frozenset({"fps", "height", "width", "img_hw", "aspect_ratio"})


class SamplingArgumentError(VidqError):
    """A sampling argument is out of its allowed range (the message names it and the range); a
    ``ValueError`` (through :class:`~vidq_jax.errors.VidqError`: the CLI prints it as one line)."""


def is_traced(x: Any) -> bool:
    """True for a JAX tracer (inside ``jax.jit`` / ``vmap`` / ``grad``): its values are unknown."""
    return isinstance(x, jax.Array) and not isinstance(x, np.ndarray) and not _is_concrete(x)


def _is_concrete(x: jax.Array) -> bool:
    """Whether a jax array holds values (a committed device array), not a tracer's abstract value."""
    try:
        x.addressable_shards  # noqa: B018 - tracers have no shards (works on JAX 0.10 and 0.11)
    except Exception:  # noqa: BLE001 - AttributeError / ConcretizationTypeError on tracers
        return False
    return True


def check_int(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (no maximum: ``>= minimum``)."""
    allowed = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SamplingArgumentError(f"{name} must be {allowed}, got {value!r}")
    n = int(value)
    if n < minimum or (maximum is not None and n > maximum):
        raise SamplingArgumentError(f"{name} must be {allowed}, got {n}")
    return n


def check_steps(steps: Any, *, maximum: int | None = None, name: str = "steps") -> int:
    """``steps`` as an ``int`` in ``[1, maximum]`` (no maximum: ``>= 1``)."""
    return check_int(steps, name, maximum=maximum)


def check_guidance(guidance_scale: Any, *, name: str = "guidance_scale") -> Any:
    """A real number in ``[-MAX_GUIDANCE, MAX_GUIDANCE]`` (any sign, see the module docstring);
    tracers pass unchanged."""
    if is_traced(guidance_scale):
        return guidance_scale
    try:
        value = math.nan if isinstance(guidance_scale, (str, bytes, bool)) else float(guidance_scale)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and abs(value) <= MAX_GUIDANCE):
        raise SamplingArgumentError(
            f"{name} must be a finite number in [{-MAX_GUIDANCE:g}, {MAX_GUIDANCE:g}] (1 = no guidance, "
            f"0 = unconditional, < 0 guides away from the prompt), got {guidance_scale!r}"
        )
    return value


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """A finite number > 0 (``integer``: an integer >= 1); ``None`` and tracers pass unchanged."""
    if value is None or is_traced(value):
        return value
    if integer:
        return check_int(value, name)
    try:
        v = math.nan if isinstance(value, (str, bytes, bool)) else float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise SamplingArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _all_finite(x: Any) -> bool:
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return bool(np.isfinite(x).all())
    return bool(jnp.isfinite(x).all())


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def check_finite(x: Any, name: str) -> None:
    """No NaN/Inf in a concrete float array (tracers and integer arrays pass)."""
    if x is None or is_traced(x) or not _is_float(x):
        return
    if not _all_finite(x):
        raise SamplingArgumentError(f"{name} holds NaN or Inf values; it must be finite")


def check_noise(noise: Any) -> None:
    """A real rank-4 / rank-5 latent with no empty axis; finite when concrete."""
    if not (hasattr(noise, "shape") and hasattr(noise, "dtype")):
        raise SamplingArgumentError(f"noise must be a jax or numpy array, got {type(noise).__name__}")
    shape = tuple(noise.shape)
    if len(shape) not in (4, 5):
        raise SamplingArgumentError(f"noise must be a (B, H, W, C) or (B, T, H, W, C) latent, got shape {shape}")
    if 0 in shape:
        raise SamplingArgumentError(f"noise must have no empty axis, got shape {shape}")
    dt = jnp.result_type(noise)
    if jnp.issubdtype(dt, jnp.complexfloating) or not jnp.issubdtype(dt, jnp.number):
        raise SamplingArgumentError(f"noise must be a real array, got dtype {dt}")
    check_finite(noise, "noise")


def _leaves(tree: Mapping[str, Any], prefix: str) -> list[tuple[str, str, Any]]:
    """``(name for messages, key, value)`` of every leaf of a (nested) condition dict."""
    out = []
    for k, v in tree.items():
        name = f"{prefix}[{k!r}]"
        out += _leaves(v, name) if isinstance(v, Mapping) else [(name, k, v)]
    return out


def _rows(v: Any) -> int | None:
    """Leading-axis length of a batched array leaf (``None``: not batched, e.g. a scalar)."""
    return int(np.shape(v)[0]) if v is not None and hasattr(v, "shape") and np.ndim(v) >= 1 else None


def _check_values(name: str, key: str, v: Any) -> None:
    if v is None or is_traced(v) or isinstance(v, (bool, str)):
        return
    if not (hasattr(v, "shape") or isinstance(v, numbers.Number)):
        return
    check_finite(v, name)
    if key in POSITIVE_CONDITIONS and not bool((np.asarray(v) > 0).all()):
        raise SamplingArgumentError(f"{name} must be > 0 everywhere (a size or rate), got {np.asarray(v).ravel()[:4]}")


def check_conditions(cond: Mapping[str, Any] | None, uncond: Mapping[str, Any] | None, batch: int) -> None:
    """Row counts of ``cond`` / ``uncond`` against the latent batch ``batch``, and concrete values
    (see the module docstring)."""
    cond_rows = {}
    for name, key, v in _leaves(dict(cond or {}), "cond"):
        rows = cond_rows[name[len("cond"):]] = _rows(v)
        if rows is not None:
            if key == "y" and rows != batch:
                raise SamplingArgumentError(f"{name} has {rows} rows but noise has batch {batch}; they must be equal")
            if rows == 0 or batch % rows:
                raise SamplingArgumentError(
                    f"{name} has {rows} rows, which does not divide the noise batch {batch}; give it {batch} rows"
                )
        _check_values(name, key, v)
    for name, key, u in _leaves(dict(uncond or {}), "uncond"):
        rows, want = _rows(u), cond_rows.get(name[len("uncond"):])
        if rows is not None and want is not None and rows != want:
            raise SamplingArgumentError(
                f"{name} has {rows} rows but the matching cond entry has {want}; they must be equal"
            )
        _check_values(name, key, u)

"""Calibration statistics of Dense inputs, captured in one jitted forward pass per batch.

``flax.linen.intercept_methods`` wraps every ``models.layers.Dense.__call__`` during
``model.apply``; the interceptor reduces the Dense input ``x (..., K)`` to small statistics
(no Python hooks in the model, nothing stored per token). Per layer and batch:

* ``absmax (K,)`` — per-input-channel ``max |x|`` over all rows (both CFG halves, every token) —
  ViDiT-Q's statistic ``A_c``; batches are merged with ``max`` (the released code's "max over calls");
* ``amax``, ``min``, ``max`` — per-tensor extremes (static per-tensor activation scales);
* ``incoherence_mean``, ``incoherence_max`` — per-token ``max|x|/mean|x|`` (ViDiT-Q's probe for
  choosing balanced layers); merged as a row-weighted mean and a max; ``rows`` counts tokens.

Optionally ``transforms[path] = (smooth | None, hadamard_signs | None)`` makes the same statistics be
taken on the balanced input ``x' = (x / s) · R`` (needed for static activation scales of balanced
layers, a second pass once ``s`` is known).

Batches are dicts of the model's keyword inputs (``x``, ``timestep``, ``y``, ``mask``, extras; see
DESIGN.md), optionally ``(name, batch)`` pairs or :class:`vidq_jax.calibration.CalibBatch` records;
the name appears in errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.quant.balance import channel_absmax, incoherence
from vidq_jax.quant.hadamard import hadamard_transform


def _dense_class():
    from models.layers import Dense  # the single linear layer of the package (lazy: optional dependency)

    return Dense


@dataclasses.dataclass
class LayerStats:
    """Merged calibration statistics of one Dense input (numpy, host side)."""

    absmax: np.ndarray  # (K,)
    amax: float
    min: float
    max: float
    incoherence_mean: float
    incoherence_max: float
    rows: int
    calls: int

    def merge(self, other: "LayerStats") -> "LayerStats":
        rows = self.rows + other.rows
        return LayerStats(
            absmax=np.maximum(self.absmax, other.absmax),
            amax=max(self.amax, other.amax),
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            incoherence_mean=(self.incoherence_mean * self.rows + other.incoherence_mean * other.rows) / max(rows, 1),
            incoherence_max=max(self.incoherence_max, other.incoherence_max),
            rows=rows,
            calls=self.calls + other.calls,
        )


def _reduce(x: jax.Array) -> dict[str, jax.Array]:
    """Traced per-call statistics of ``x (..., K)`` (float32 math)."""
    xf = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    inc = incoherence(xf)
    return {
        "absmax": channel_absmax(xf),
        "min": jnp.min(xf),
        "max": jnp.max(xf),
        "inc_sum": jnp.sum(inc),
        "inc_max": jnp.max(inc),
        "rows": jnp.asarray(xf.shape[0], jnp.int32),
        # XLA's CPU max/min reductions may drop NaN (fast min/max): count non-finite values explicitly
        "nonfinite": jnp.sum(~jnp.isfinite(xf)).astype(jnp.int32),
    }


def _combine(a: dict, b: dict) -> dict:
    """Two calls of the same Dense inside one forward (not the case in our models, but legal)."""
    return {
        "absmax": jnp.maximum(a["absmax"], b["absmax"]),
        "min": jnp.minimum(a["min"], b["min"]),
        "max": jnp.maximum(a["max"], b["max"]),
        "inc_sum": a["inc_sum"] + b["inc_sum"],
        "inc_max": jnp.maximum(a["inc_max"], b["inc_max"]),
        "rows": a["rows"] + b["rows"],
        "nonfinite": a["nonfinite"] + b["nonfinite"],
        "calls": a["calls"] + b["calls"],
    }


def make_stats_fn(model: nn.Module, paths: Iterable[str] | None = None, transforms: Mapping[str, Any] | None = None):
    """``(f, order)``: jitted ``f(params, batch) -> {path: stats}`` (one forward pass of ``model``) and
    the list ``order`` of intercepted paths in call order (filled when ``f`` is traced).

    ``paths``: only these Dense layers (``None`` = all). ``transforms``: see module docstring.
    """
    dense_cls = _dense_class()
    wanted = None if paths is None else frozenset(paths)
    transforms = dict(transforms or {})
    order: list[str] = []

    def stats_fn(params, batch):
        found: dict[str, dict] = {}
        order.clear()

        def interceptor(next_fun, args, kwargs, context):
            if isinstance(context.module, dense_cls) and context.method_name == "__call__":
                path = "/".join(context.module.path)
                if wanted is None or path in wanted:
                    x = args[0] if args else kwargs["x"]
                    if path in transforms:
                        smooth, signs = transforms[path]
                        x = x.astype(jnp.float32)
                        if smooth is not None:
                            x = x / smooth
                        if signs is not None:
                            x = hadamard_transform(x, signs)
                    st = _reduce(x)
                    st["calls"] = jnp.asarray(1, jnp.int32)
                    if path in found:
                        found[path] = _combine(found[path], st)
                    else:
                        found[path] = st
                        order.append(path)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            model.apply({"params": params}, **batch)
        return found

    return jax.jit(stats_fn), order


def _named(batches: Iterable) -> Iterable[tuple[str, dict]]:
    for i, item in enumerate(batches):
        if hasattr(item, "as_pair"):  # vidq_jax.calibration.CalibBatch (duck-typed: no import cycle)
            item = item.as_pair()
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            yield item[0], item[1]
        elif isinstance(item, Mapping):
            yield f"batch {i}", dict(item)
        else:
            raise TypeError(f"calibration batch {i} must be a dict of model inputs or a (name, dict) pair")


def collect_stats(
    model: nn.Module,
    params: Any,
    calib_batches: Iterable,
    *,
    paths: Iterable[str] | None = None,
    transforms: Mapping[str, Any] | None = None,
) -> dict[str, LayerStats]:
    """Run every calibration batch once (jitted) and merge the per-layer statistics.

    Raises ``ValueError`` for an empty iterator and for non-finite statistics (naming the layer and
    the batch), and if a requested layer never ran.
    """
    if calib_batches is None:
        raise ValueError("calibration data is required (calib_batches is None)")
    fn, order = make_stats_fn(model, paths, transforms)
    merged: dict[str, LayerStats] = {}
    n = 0
    for name, batch in _named(calib_batches):
        n += 1
        raw = jax.device_get(fn(params, batch))
        for path in order:  # call order: the first bad layer is where NaN/Inf appear
            st = raw[path]
            bad = int(st["nonfinite"]) > 0 or not all(np.all(np.isfinite(st[k])) for k in ("absmax", "min", "max"))
            if bad:
                raise ValueError(
                    f"non-finite calibration activations (NaN/Inf) at the input of layer {path!r} in {name}"
                )
            rows = int(st["rows"])
            cur = LayerStats(
                absmax=np.asarray(st["absmax"], np.float32),
                amax=float(np.max(st["absmax"])),
                min=float(st["min"]),
                max=float(st["max"]),
                incoherence_mean=float(st["inc_sum"]) / max(rows, 1),
                incoherence_max=float(st["inc_max"]),
                rows=rows,
                calls=int(st["calls"]),
            )
            merged[path] = merged[path].merge(cur) if path in merged else cur
    if n == 0:
        raise ValueError("calibration data is empty: the calib_batches iterator yielded no batch")
    if paths is not None:
        missing = sorted(set(paths) - set(merged))
        if missing:
            raise ValueError(f"layers never called during calibration: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return merged


__all__ = ["LayerStats", "collect_stats", "make_stats_fn"]

"""Calibration statistics of Dense inputs, captured in one jitted forward pass per batch.

``flax.linen.intercept_methods`` wraps every ``models.layers.Dense.__call__`` during
``model.apply``; the interceptor reduces the Dense input ``x (..., K)`` to small statistics
(no Python hooks in the model, nothing stored per token).

Statistics are pluggable by name (:data:`STATISTICS`, a registry of :class:`Statistic` reducers:
a traced per-call reduction, a traced combination of two calls, a host-side finish and a
host-side merge over batches). Quantization methods declare the ones they need
(:attr:`vidq_jax.quant.methods.WeightMethod.statistics`); :func:`collect_stats` collects the
requested ones (``statistics=("absmax",)`` by default):

* ``"absmax"`` (always collected; it is :class:`LayerStats` itself):

  - ``absmax (K,)`` — per-input-channel ``max |x|`` over all rows (both CFG halves, every token) —
    ViDiT-Q's statistic ``A_c``; batches are merged with ``max`` (the released code's "max over calls");
  - ``amax``, ``min``, ``max`` — per-tensor extremes (static per-tensor activation scales);
  - ``incoherence_mean``, ``incoherence_max`` — per-token ``max|x|/mean|x|`` (ViDiT-Q's probe for
    choosing balanced layers); merged as a row-weighted mean and a max; ``rows`` counts tokens,
    ``calls`` the Dense calls.

* ``"hessian"`` — ``XᵀX`` summed over all rows (:class:`Hessian`, in ``LayerStats.extra``; the
  input of GPTQ-style weight methods).

Add one: a :class:`Statistic` and its entry in :data:`STATISTICS`.

Optionally ``transforms[path] = (smooth | None, hadamard_signs | None)`` makes the same statistics be
taken on the balanced input ``x' = (x / s) · R`` (needed for static activation scales of balanced
layers, a second pass once ``s`` is known).

Batches are dicts of the model's keyword inputs (``x``, ``timestep``, ``y``, ``mask``, extras; see
DESIGN.md), optionally ``(name, batch)`` pairs or :class:`vidq_jax.calibration.CalibBatch` records;
the name appears in errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
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


@dataclasses.dataclass(frozen=True)
class Statistic:
    """A named calibration statistic of a Dense input ``x (M, K)`` (float32, rows = tokens).

    ``reduce(x) -> {key: array}`` (traced, per call), ``combine(a, b)`` (traced: two calls of the
    same Dense in one forward), ``finish(raw) -> value`` (host: the numpy arrays of one batch),
    ``merge(a, b) -> value`` (host: two batches)."""

    name: str
    reduce: Callable[[jax.Array], dict[str, jax.Array]]
    combine: Callable[[dict, dict], dict]
    finish: Callable[[Mapping[str, Any]], Any]
    merge: Callable[[Any, Any], Any]


@dataclasses.dataclass
class LayerStats:
    """Merged calibration statistics of one Dense input (numpy, host side): the ``"absmax"``
    statistic, plus the other requested statistics by name in ``extra``."""

    absmax: np.ndarray  # (K,)
    amax: float
    min: float
    max: float
    incoherence_mean: float
    incoherence_max: float
    rows: int
    calls: int
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

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
            extra={n: STATISTICS[n].merge(v, other.extra[n]) for n, v in self.extra.items()},
        )


def _absmax_reduce(xf: jax.Array) -> dict[str, jax.Array]:
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
        "calls": jnp.asarray(1, jnp.int32),
    }


def _absmax_combine(a: dict, b: dict) -> dict:
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


def _absmax_finish(st: Mapping[str, Any]) -> LayerStats:
    rows = int(st["rows"])
    return LayerStats(
        absmax=np.asarray(st["absmax"], np.float32),
        amax=float(np.max(st["absmax"])),
        min=float(st["min"]),
        max=float(st["max"]),
        incoherence_mean=float(st["inc_sum"]) / max(rows, 1),
        incoherence_max=float(st["inc_max"]),
        rows=rows,
        calls=int(st["calls"]),
    )


@dataclasses.dataclass
class Hessian:
    """``xtx = Σ xᵀx (K, K)`` over ``rows`` input rows (float32): the ``"hessian"`` statistic."""

    xtx: np.ndarray
    rows: int

    def merge(self, other: "Hessian") -> "Hessian":
        return Hessian(self.xtx + other.xtx, self.rows + other.rows)


def _sum_combine(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


STATISTICS: dict[str, Statistic] = {
    "absmax": Statistic("absmax", _absmax_reduce, _absmax_combine, _absmax_finish, LayerStats.merge),
    "hessian": Statistic(
        "hessian",
        lambda xf: {"xtx": jnp.matmul(xf.T, xf, precision=jax.lax.Precision.HIGHEST),
                    "rows": jnp.asarray(xf.shape[0], jnp.int32)},
        _sum_combine,
        lambda st: Hessian(np.asarray(st["xtx"], np.float32), int(st["rows"])),
        Hessian.merge,
    ),
}
"""Calibration statistics by name (module docstring)."""


def _statistic_names(statistics: Iterable[str]) -> tuple[str, ...]:
    """``"absmax"`` first, then the other requested names once each (unknown names: ``ValueError``)."""
    names = tuple(dict.fromkeys(("absmax", *statistics)))
    unknown = [n for n in names if n not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown calibration statistics {unknown}; available: {sorted(STATISTICS)}")
    return names


def make_stats_fn(model: nn.Module, paths: Iterable[str] | None = None, transforms: Mapping[str, Any] | None = None,
                  statistics: Iterable[str] = ("absmax",)):
    """``(f, order)``: jitted ``f(params, batch) -> {path: {statistic: {key: array}}}`` (one forward
    pass of ``model``; the raw arrays of each :class:`Statistic`'s ``reduce``) and the list ``order``
    of intercepted paths in call order (filled when ``f`` is traced).

    ``paths``: only these Dense layers (``None`` = all). ``transforms``: see module docstring.
    ``statistics``: names in :data:`STATISTICS` (``"absmax"`` is always included).
    """
    from models.layers import dense_input  # the Dense input an interceptor sees (prenorm applied)

    dense_cls = _dense_class()
    wanted = None if paths is None else frozenset(paths)
    transforms = dict(transforms or {})
    stats = [STATISTICS[n] for n in _statistic_names(statistics)]
    order: list[str] = []

    def stats_fn(params, batch):
        found: dict[str, dict] = {}
        order.clear()

        def interceptor(next_fun, args, kwargs, context):
            if isinstance(context.module, dense_cls) and context.method_name == "__call__":
                path = "/".join(context.module.path)
                if wanted is None or path in wanted:
                    x = dense_input(args, kwargs)
                    if path in transforms:
                        smooth, signs = transforms[path]
                        x = x.astype(jnp.float32)
                        if smooth is not None:
                            x = x / smooth
                        if signs is not None:
                            x = hadamard_transform(x, signs)
                    xf = x.astype(jnp.float32).reshape(-1, x.shape[-1])
                    st = {s.name: s.reduce(xf) for s in stats}
                    if path in found:
                        found[path] = {s.name: s.combine(found[path][s.name], st[s.name]) for s in stats}
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
    statistics: Iterable[str] = ("absmax",),
) -> dict[str, LayerStats]:
    """Run every calibration batch once (jitted) and merge the per-layer statistics.

    ``statistics``: names in :data:`STATISTICS`; ``"absmax"`` (the :class:`LayerStats` fields) is
    always collected, the others land in ``LayerStats.extra[name]``. Raises ``ValueError`` for an
    empty iterator and for non-finite statistics (naming the layer and the batch), and if a
    requested layer never ran.
    """
    if calib_batches is None:
        raise ValueError("calibration data is required (calib_batches is None)")
    names = _statistic_names(statistics)
    fn, order = make_stats_fn(model, paths, transforms, names)
    merged: dict[str, LayerStats] = {}
    n = 0
    for name, batch in _named(calib_batches):
        n += 1
        raw = jax.device_get(fn(params, batch))
        for path in order:  # call order: the first bad layer is where NaN/Inf appear
            st = raw[path]["absmax"]
            bad = int(st["nonfinite"]) > 0 or not all(np.all(np.isfinite(st[k])) for k in ("absmax", "min", "max"))
            if bad:
                raise ValueError(
                    f"non-finite calibration activations (NaN/Inf) at the input of layer {path!r} in {name}"
                )
            cur = _absmax_finish(st)
            cur.extra = {s: STATISTICS[s].finish(raw[path][s]) for s in names[1:]}
            merged[path] = merged[path].merge(cur) if path in merged else cur
    if n == 0:
        raise ValueError("calibration data is empty: the calib_batches iterator yielded no batch")
    if paths is not None:
        missing = sorted(set(paths) - set(merged))
        if missing:
            raise ValueError(f"layers never called during calibration: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return merged


__all__ = ["STATISTICS", "Hessian", "LayerStats", "Statistic", "collect_stats", "make_stats_fn"]

"""Metric-decoupled sensitivity of (block × layer group × timestep segment) units, and a bit
allocator that turns it into a :class:`~vidq_jax.quant.plan.MixedPrecisionPlan`
(ViDiT-Q §5; the released code ships neither, its issue #34).

Sensitivity (:func:`measure_sensitivity`). A unit is the layers of one group
(:data:`~vidq_jax.quant.groups.LAYER_GROUPS`) in one block; for each unit ``u`` and
segment ``s`` ONLY ``u`` runs at the low-bit setting during ``s``, everything else stays float, and
the model samples from the same noise as the float reference. Every layer of every unit is a
:class:`~vidq_jax.quant.segmented.SegmentedWeight` with variants (float, low-bit) whose
variant table is a traced leaf, so the whole sweep runs ONE compiled sampler (tables change,
shapes do not). Metrics, matched to what each group affects:

* ``fidelity`` (spatial attention, FFN): relative MSE of the final latent vs the float sample;
* ``temporal`` (temporal attention): relative MSE of the frame differences ``x[:, 1:] - x[:, :-1]``
  of the final latent (temporal consistency; falls back to ``fidelity`` for images);
* ``text`` (cross attention): 1 − cosine between the quantized and float CFG directions
  ``out_cond − out_uncond`` on the calibration batches of that segment (teacher-forced on the float
  trajectory) — a text-alignment proxy that needs no CLIP model.

``mse`` (``fidelity``) is recorded for every unit: it sets the group budgets (paper step 3).

Allocation (:func:`allocate_bits`): all candidate layers start at ``low`` bits; the extra budget
``(budget_bits − low) × Σ size·steps`` is split over groups in proportion to the groups' summed
``mse``; inside a group, units × segments are promoted to ``high`` greedily by their decoupled
metric per unit cost (size × steps × (high − low)); what a group cannot spend is pooled and spent
greedily on the remaining units ranked by their metric normalised within their group.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.quant.api import quantize_params
from vidq_jax.quant.config import BLOCK_LAYERS, QuantConfig
from vidq_jax.quant.groups import block_of, layer_group, unit_pattern
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.segmented import FloatKernel, SegmentedWeight, with_segment
from vidq_jax.quant.tree import dense_kernels, get_kernel, set_kernel, unwrap_params

GROUP_METRIC: dict[str, str] = {
    "cross_attn": "text",
    "self_attn": "fidelity",
    "ffn": "fidelity",
    "temporal_attn": "temporal",
}


@dataclasses.dataclass(frozen=True)
class Unit:
    """The layers of ``group`` in ``block``: ``pattern`` selects them, ``size`` = weight elements."""

    block: str
    group: str
    pattern: str
    paths: tuple[str, ...]
    size: int


@dataclasses.dataclass
class Sensitivity:
    """Sweep result: ``scores[i][s] = {"fidelity", "temporal", "text", "metric"}`` of unit ``i``
    in segment ``s`` (``metric`` = the group's decoupled metric); plus the segmentation."""

    units: list[Unit]
    num_steps: int
    boundaries: tuple[int, ...]
    low_bits: int
    scores: list[list[dict[str, float]]]

    def metric(self, i: int, s: int) -> float:
        return self.scores[i][s]["metric"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "boundaries": list(self.boundaries),
            "low_bits": self.low_bits,
            "units": [dataclasses.asdict(u) | {"paths": list(u.paths)} for u in self.units],
            "scores": self.scores,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def find_units(params: Mapping[str, Any], config: QuantConfig) -> list[Unit]:
    """Units of every block layer that ``config`` quantizes, in path order."""
    kernels = dense_kernels(params)
    units: dict[tuple[str, str], list[str]] = {}
    for p in kernels:
        g = layer_group(p)
        if g is None or not block_of(p) or config.resolve(p) is None:
            continue
        units.setdefault((block_of(p), g), []).append(p)
    out = []
    for (block, group), paths in units.items():
        size = int(sum(np.prod(kernels[p].shape) for p in paths))
        out.append(Unit(block, group, unit_pattern(block, group), tuple(paths), size))
    return out


def _rel_mse(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.sum(jnp.square(a - b)) / jnp.maximum(jnp.sum(jnp.square(b)), 1e-30))


def _frame_diff(x: jax.Array) -> jax.Array:
    return x[:, 1:] - x[:, :-1]


def measure_sensitivity(
    model,
    params: Mapping[str, Any],
    calib_batches: Sequence[Any],
    *,
    config: QuantConfig,
    noise: jax.Array,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None = None,
    num_steps: int,
    boundaries: Sequence[int],
    key: jax.Array | None = None,
    units: Sequence[Unit] | None = None,
    sample_fn: Callable[..., jax.Array],
    **sampler_kwargs: Any,
) -> Sensitivity:
    """Run the sweep (module docstring). ``config``: the LOW-bit setting (e.g. ``viditq-w4a8``);
    ``calib_batches``: :class:`vidq_jax.calibration.CalibBatch` records (their ``step`` places
    them in segments; also used to calibrate ``config``); ``noise``/``cond``/``uncond``/``key``:
    the reference sampling run (``num_steps`` steps). ``sample_fn``: the sampler of segment-planned
    params, ``sample_fn(model, params, noise, cond, uncond, *, plan, steps, key, **sampler_kwargs)
    -> final latent`` — :func:`vidq_jax.pipeline.sample` (the family's release sampler)."""
    batches = list(calib_batches)
    plan_shape = MixedPrecisionPlan("sensitivity", num_steps, tuple(boundaries), ())
    nseg = plan_shape.num_segments
    inner, _ = unwrap_params(params)
    units = list(units) if units is not None else find_units(inner, config)
    if not units:
        raise ValueError(f"config {config.name!r} quantizes no block layer of this model: nothing to measure")
    low = quantize_params(inner, batches, model=model, config=config)
    zeros = jnp.zeros((nseg,), jnp.int32)
    sweep = inner
    for u in units:
        for p in u.paths:
            rec = SegmentedWeight((FloatKernel(jnp.asarray(get_kernel(inner, p))), get_kernel(low, p)), zeros,
                                  jnp.zeros((), jnp.int32))
            sweep = set_kernel(sweep, p, rec)

    def with_unit(i: int | None, s: int | None) -> Any:
        out = sweep
        if i is None:
            return out
        table = zeros.at[s].set(1)
        for p in units[i].paths:
            out = set_kernel(out, p, get_kernel(sweep, p).replace(segment_variant=table))
        return out

    kw = dict(plan=plan_shape, steps=num_steps, key=key, **sampler_kwargs)
    ref = sample_fn(model, sweep, noise, cond, uncond, **kw)

    fwd = jax.jit(lambda p, seg, b: model.apply({"params": with_segment(p, seg)}, **b))
    c = noise.shape[-1]
    seg_batches = [[b for b in batches if plan_shape.segment_of_step(b.step, num_steps) == s] for s in range(nseg)]

    def cfg_direction(p: Any, s: int) -> list[jax.Array]:
        out = []
        for b in seg_batches[s]:
            y = fwd(p, s, b.batch)[..., :c]
            half = y.shape[0] // 2
            out.append((y[:half] - y[half:]).reshape(-1))
        return out

    ref_dirs = [cfg_direction(sweep, s) for s in range(nseg)]
    video = noise.ndim == 5
    scores: list[list[dict[str, float]]] = []
    for i, u in enumerate(units):
        row = []
        for s in range(nseg):
            p = with_unit(i, s)
            x = sample_fn(model, p, noise, cond, uncond, **kw)
            sc = {"fidelity": _rel_mse(x, ref)}
            sc["temporal"] = _rel_mse(_frame_diff(x), _frame_diff(ref)) if video else sc["fidelity"]
            if u.group == "cross_attn" and ref_dirs[s]:
                cos = [float(jnp.dot(a, r) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(r), 1e-30))
                       for a, r in zip(cfg_direction(p, s), ref_dirs[s])]
                sc["text"] = 1.0 - float(np.mean(cos))
            else:
                sc["text"] = float("nan")
            metric = GROUP_METRIC[u.group]
            sc["metric"] = sc[metric] if np.isfinite(sc[metric]) else sc["fidelity"]
            row.append(sc)
        scores.append(row)
    low_bits = max((config.resolve(p).w_bits for u in units for p in u.paths), default=0)
    return Sensitivity(units, num_steps, tuple(boundaries), low_bits, scores)


def allocate_bits(
    sens: Sensitivity,
    *,
    budget_bits: float,
    low: int | None = None,
    high: int = 8,
    name: str = "searched-mp",
) -> MixedPrecisionPlan:
    """Greedy metric-decoupled allocation under an average weight-bit budget (module docstring).

    ``budget_bits``: target average weight bits over the candidate layers (element- and
    step-weighted), between ``low`` and ``high``. The returned plan sets every block layer to
    ``low`` and promotes the chosen units per segment to ``high``; its average bits never exceed
    the budget.
    """
    low = sens.low_bits if low is None else low
    if not low <= budget_bits <= high:
        raise ValueError(f"budget_bits={budget_bits} must lie in [{low}, {high}]")
    plan_shape = MixedPrecisionPlan("shape", sens.num_steps, sens.boundaries, ())
    nseg = plan_shape.num_segments
    steps = [len(plan_shape.segment_steps(s)) for s in range(nseg)]
    cands = [(i, s) for i in range(len(sens.units)) for s in range(nseg)]
    cost = {(i, s): sens.units[i].size * steps[s] * (high - low) for i, s in cands}
    total = sum(u.size for u in sens.units) * sens.num_steps
    extra = (budget_bits - low) * total
    groups = sorted({u.group for u in sens.units})
    mse = {g: sum(sens.scores[i][s]["fidelity"] for i, s in cands if sens.units[i].group == g) for g in groups}
    mse_sum = sum(mse.values())
    chosen: set[tuple[int, int]] = set()
    spent = 0.0
    pool = 0.0
    for g in groups:
        budget = extra * (mse[g] / mse_sum if mse_sum > 0 else 1.0 / len(groups))
        ranked = sorted((c for c in cands if sens.units[c[0]].group == g),
                        key=lambda c: -sens.metric(*c) / cost[c])
        for c in ranked:
            if cost[c] <= budget + 1e-9 and sens.metric(*c) > 0:
                chosen.add(c)
                budget -= cost[c]
                spent += cost[c]
        pool += budget
    # leftovers: remaining units by their metric normalised within their group
    norm = {g: max([sens.metric(*c) for c in cands if sens.units[c[0]].group == g] + [1e-30]) for g in groups}
    rest = sorted((c for c in cands if c not in chosen),
                  key=lambda c: -(sens.metric(*c) / norm[sens.units[c[0]].group]) / cost[c])
    remaining = extra - spent
    for c in rest:
        if cost[c] <= remaining + 1e-9 and sens.metric(*c) > 0:
            chosen.add(c)
            remaining -= cost[c]
    rules = [BitsRule(BLOCK_LAYERS, low)]
    for i, u in enumerate(sens.units):
        segs = tuple(s for s in range(nseg) if (i, s) in chosen)
        if segs:
            rules.append(BitsRule(u.pattern, high, segments=segs if len(segs) < nseg else ()))
    return MixedPrecisionPlan(name, sens.num_steps, sens.boundaries, tuple(rules),
                              description=f"metric-decoupled greedy allocation, budget {budget_bits} bits (W{low}/W{high})")


__all__ = ["GROUP_METRIC", "Sensitivity", "Unit", "allocate_bits", "find_units", "measure_sensitivity"]

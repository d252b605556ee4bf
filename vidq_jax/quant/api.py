"""End-to-end post-training quantization of a params tree: ``quantize_params``.

Pipeline (ViDiT-Q "new" code, quantize-once variant)::

    paths   = every Dense in the params tree (a dict holding a 2-D "kernel")
    layer   = config.resolve(path)                        (None -> stays float)
    stats   = collect_stats(...)  the statistics the layers need (channel absmax of each Dense input
              over all calibration batches; plus what their weight method declares)
    s, h    = balance_for_layer(kernel, layer, A, key=layer_key(config.seed, path))
    [static activation scales: second calibration pass on the balanced inputs x' = (x/s)·R]
    kernel  -> WEIGHT_METHODS[layer.w_method].quantize(kernel, layer, smooth=s, hadamard_signs=h,
                                                       stats=stats[path], act_scale=...)

A sequential weight method (GPTQ) makes the last step run stage by stage in execution order, each
stage's statistics re-collected with the earlier stages already quantized (:mod:`vidq_jax.quant.sequential`).

Calibration runs only if some selected layer needs it (smoothing, static activation scales, or a
weight method's statistics). The result is the same params tree with selected ``kernel`` leaves
replaced by records (:class:`~vidq_jax.quant.record.QuantizedWeight` for round-to-nearest);
``models.layers.Dense`` dispatches on them. With a timestep-segment ``plan``
(:class:`~vidq_jax.quant.plan.MixedPrecisionPlan`) each layer is quantized once per distinct
setting over the segments and becomes a :class:`~vidq_jax.quant.segmented.SegmentedWeight` where
its setting changes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.families import find_family
from vidq_jax.quant.attention import QuantizedAttention, attention_records, set_attention_records
from vidq_jax.quant.balance import balance_for_layer, layer_key
from vidq_jax.quant.config import LayerQuant, QuantConfig, check_rules
from vidq_jax.quant.fold import fold_params, record_layer
from vidq_jax.quant.methods import layer_statistics, weight_method
from vidq_jax.quant.plan import MixedPrecisionPlan
from vidq_jax.quant.record import QuantizedWeight, static_act_params
from vidq_jax.quant.segmented import FloatKernel, segment_record
from vidq_jax.quant.sequential import sequential_records
from vidq_jax.quant.stats import LayerStats, collect_stats
from vidq_jax.quant.tree import dense_kernels, dense_paths, get_kernel, rewrap_params, set_kernel, unwrap_params

DEFAULT_PRESET = "viditq-w8a8"
"""The preset :func:`quantize_params` uses when no ``config`` is given."""


@functools.partial(jax.jit, static_argnames=("layer", "where"))
def _balance_jit(kernel, layer, absmax, key, where):
    return balance_for_layer(kernel, layer, absmax, key=key, where=where)


def _segment_configs(config: QuantConfig, plan: MixedPrecisionPlan | None) -> list[QuantConfig]:
    return [config] if plan is None else [plan.config_for_segment(config, s) for s in range(plan.num_segments)]


def _fitted(lq: LayerQuant | None, kernel: Any) -> LayerQuant | None:
    """``lq`` fitted to the layer's ``C_in`` (:meth:`LayerQuant.fitted`; ``None`` stays float)."""
    return None if lq is None else lq.fitted(int(kernel.shape[0]))


def _layer_settings(
    inner: Mapping[str, Any], config: QuantConfig, plan: MixedPrecisionPlan | None, paths: list[str],
    model_name: str | None = None,
) -> dict[str, list[LayerQuant | None]]:
    """``{path: [setting of each segment]}`` (one entry without a plan; ``None`` = float) of every
    Dense; rules checked (warnings emitted), already-quantized layers and unknown weight methods refused."""
    if plan is not None:
        plan.check(paths)
    check_rules(config, paths, model=model_name)
    cfgs = _segment_configs(config, plan)
    settings: dict[str, list[LayerQuant | None]] = {p: [_fitted(c.resolve(p), get_kernel(inner, p)) for c in cfgs]
                                                    for p in paths}
    for p, lqs in settings.items():
        if any(lq is not None for lq in lqs) and hasattr(get_kernel(inner, p), "quantized_dense"):
            raise ValueError(f"layer {p!r} is already quantized")
        for lq in dict.fromkeys(x for x in lqs if x is not None):
            weight_method(lq.w_method, p)
    return settings


def calibration_stats(
    model: nn.Module | None,
    params: Mapping[str, Any],
    calib_batches: Iterable | None,
    layers: Mapping[str, LayerQuant],
    config_name: str = "",
    stats: Mapping[str, LayerStats] | None = None,
) -> tuple[dict[str, LayerStats], list]:
    """Statistics of the layers among ``layers`` that need calibration (``({}, [])`` if none) and
    the materialised batch list (reused by the static-scale pass). Precomputed ``stats`` covering
    those layers (and the statistics they need) are reused (no calibration pass)."""
    needed = {p: layer_statistics(lq, p) for p, lq in layers.items()}
    calib = [p for p, names in needed.items() if names]
    if not calib:
        return {}, []
    extra = {n for p in calib for n in needed[p] if n != "absmax"}
    if stats is not None and all(p in stats and extra <= set(stats[p].extra) for p in calib):
        static = any(layers[p].a_static for p in calib)
        if static and calib_batches is None:
            raise ValueError(f"config {config_name!r}: static activation scales need calib_batches even with stats")
        return dict(stats), list(calib_batches) if static else []
    if calib_batches is None:
        raise ValueError(f"config {config_name!r} needs calibration data for layers such as {calib[:3]}")
    batches = list(calib_batches)  # consumed twice when static scales of balanced layers are needed
    return collect_stats(model, params, batches, paths=calib, statistics=sorted(extra)), batches


def _shared_balance(
    inner: Mapping[str, Any], items: list[tuple[str, LayerQuant]], stats: Mapping[str, LayerStats], config: QuantConfig
) -> dict[tuple[str, LayerQuant], tuple]:
    """``(smooth, signs)`` of every ``(path, layer)`` item; layers grouped by
    ``config.share_balance`` get ONE (m, H): smoothing from the max of their weight-channel absmax
    (concatenated output columns) and of their calibrated input absmax, signs from the pattern's key."""
    out: dict[tuple[str, LayerQuant], tuple] = {}
    groups: dict[tuple[str, float | None, bool], list[str]] = {}
    for p, lq in items:
        pat = config.share_pattern(p)
        if pat is not None and (lq.smooth_alpha is not None or lq.rotate):
            groups.setdefault((pat, lq.smooth_alpha, lq.rotate), []).append(p)
            continue
        absmax = jnp.asarray(stats[p].absmax) if p in stats else None
        out[(p, lq)] = _balance_jit(get_kernel(inner, p), lq, absmax, layer_key(config.seed, p), "")
    for (pat, alpha, rotate), members in groups.items():
        key_lq = LayerQuant(smooth_alpha=alpha, rotate=rotate)
        kernels = [jnp.asarray(get_kernel(inner, p)) for p in members]
        ks = {k.shape[0] for k in kernels}
        if len(ks) != 1:
            raise ValueError(f"share_balance pattern {pat!r} groups layers of different C_in {sorted(ks)}: {members}")
        absmax = None
        if key_lq.smooth_alpha is not None:
            absmaxes = [np.asarray(stats[p].absmax) for p in members]
            spread = max(float(np.max(np.abs(a - absmaxes[0]))) for a in absmaxes) / max(float(np.max(absmaxes[0])), 1e-30)
            if spread > 1e-3:
                warnings.warn(
                    f"share_balance {pat!r}: layers {members} see different inputs (channel absmax differs by "
                    f"{spread:.2%}); sharing (m, H) is meant for consumers of one tensor",
                    stacklevel=3,
                )
            absmax = jnp.asarray(np.max(np.stack(absmaxes), axis=0))
        joint = jnp.concatenate(kernels, axis=1)  # (K, sum N): column absmax over all consumers
        shared = _balance_jit(joint, key_lq, absmax, layer_key(config.seed, "share:" + pat), "")
        for p, lq in items:
            if p in members and (lq.smooth_alpha, lq.rotate) == (alpha, rotate):
                out[(p, lq)] = shared
    return out


def build_records(
    inner: Mapping[str, Any],
    items: list[tuple[str, LayerQuant]],
    *,
    model: nn.Module | None,
    config: QuantConfig,
    stats: Mapping[str, LayerStats],
    batches: list,
) -> dict[tuple[str, LayerQuant], Any]:
    """Quantized records of ``(path, layer)`` items, each by its weight method (``layer.w_method``;
    a path may appear with several settings, e.g. the bit-widths of a mixed-precision plan; they
    share the layer's smoothing and rotation). ``stats``/``batches`` from :func:`calibration_stats`."""
    balance = _shared_balance(inner, items, stats, config)
    post = {p: balance[(p, lq)] for p, lq in items if lq.a_static and any(v is not None for v in balance[(p, lq)])}
    post_stats = collect_stats(model, inner, batches, paths=list(post), transforms=post) if post else {}

    def quantize_item(p: str, lq: LayerQuant, layer_stats: LayerStats | None) -> Any:
        smooth, signs = balance[(p, lq)]
        a_scale = a_zp = None
        if lq.a_static:
            st = post_stats.get(p, stats.get(p))
            a_scale, a_zp = static_act_params(st.amax if lq.a_symmetric else (st.min, st.max), lq)
        return weight_method(lq.w_method, p).quantize(
            get_kernel(inner, p), lq, smooth=smooth, hadamard_signs=signs, stats=layer_stats, act_scale=a_scale,
            act_zero_point=a_zp, name=p,
        )

    if any(weight_method(lq.w_method, p).sequential for p, lq in items):  # e.g. GPTQ: stage by stage
        return sequential_records(inner, items, quantize_item, model=model, stats=stats, batches=batches)
    return {(p, lq): quantize_item(p, lq, stats.get(p)) for p, lq in items}


def model_of(calib_batches: Sequence[Any]) -> nn.Module | None:
    """The model the first calibration batch was recorded with (``CalibBatch.model``), if it says."""
    return getattr(calib_batches[0], "model", None) if calib_batches else None


def model_name(model: nn.Module | None) -> str | None:
    """``"STDiT3 (stdit3)"``: how errors name a model (None without one)."""
    if model is None:
        return None
    fam = find_family(model)
    return type(model).__name__ + (f" ({fam.name})" if fam is not None else "")


def quantize_params(
    params: Mapping[str, Any],
    calib_batches: Iterable | None = None,
    *,
    model: nn.Module | None = None,
    config: QuantConfig | None = None,
    plan: MixedPrecisionPlan | None = None,
    return_stats: bool = False,
    stats: Mapping[str, LayerStats] | None = None,
):
    """Quantize every Dense selected by ``config`` (see module docstring).

    ``params``: the model's ``params`` dict (a ``{"params": ...}`` wrapper is accepted and kept).
    ``calib_batches``: iterable of :class:`vidq_jax.calibration.CalibBatch` records (from
    :func:`vidq_jax.calibration.collect`), model-input dicts or ``(name, dict)`` pairs, materialised
    once; required only when a selected layer needs calibration statistics (empty -> ``ValueError``).
    ``model``: the Flax module that runs the batches (default: the one the CalibBatch records were
    recorded with); its family (:mod:`models.families`) binds the config's ``group:`` rules, and a rule
    that matches none of its layers is an error naming the rule and the model. ``config``: default ``QuantConfig.preset("viditq-w8a8")``.
    ``plan``: a :class:`~vidq_jax.quant.plan.MixedPrecisionPlan`: per-segment settings
    ``plan.config_for_segment(config, s)``; calibration runs once, each layer is quantized once per
    distinct setting, layers whose setting changes become :class:`~vidq_jax.quant.segmented.SegmentedWeight`
    (float segments: a :class:`~vidq_jax.quant.segmented.FloatKernel` variant). Sample them with
    ``vidq_jax.pipeline.sample(..., plan=plan)`` (a plain ``model.apply`` runs segment 0); unknown plan
    patterns warn. ``stats``: statistics from an earlier ``return_stats=True`` call (or
    :func:`collect_stats`) to reuse instead of a calibration pass (e.g. several configs on the same data).
    Returns the new params (and ``{path: LayerStats}`` when ``return_stats``).
    """
    batches = None if calib_batches is None else list(calib_batches)
    if model is None and batches:
        model = model_of(batches)
        if model is None:
            raise ValueError("quantize_params: model= is missing (the calibration batches do not say which model "
                             "they belong to; CalibBatch records of vidq_jax.calibration.collect do)")
    if config is None:
        config = QuantConfig.preset(DEFAULT_PRESET)
    inner, wrapped = unwrap_params(params)
    paths = dense_paths(inner)
    if not paths:
        raise ValueError("no Dense kernels found in params (expected dicts holding a 2-D 'kernel')")
    if find_family(model) is not None:  # group:<name> rules address this model's family (models.families)
        config = config.for_model(model, paths)
    settings = _layer_settings(inner, config, plan, paths, model_name(model))
    union: dict[str, LayerQuant] = {}  # one calibrating setting per layer suffices: stats are per layer
    for p, lqs in settings.items():
        for lq in dict.fromkeys(x for x in lqs if x is not None):
            if p not in union or lq.needs_calibration:
                union[p] = lq
    stats, calib = calibration_stats(model, inner, batches, union, config.name, stats)
    # fold_heads layers: their balancing moves into V and their weight (quant/fold.py), before V is quantized
    inner, settings, stats = fold_params(inner, settings, model=model, config=config, stats=stats,
                                         batches=calib or batches)
    items = [(p, lq) for p, lqs in settings.items() for lq in dict.fromkeys(x for x in lqs if x is not None)]
    records = build_records(inner, items, model=model, config=config, stats=stats, batches=calib)
    new = inner
    for p, lqs in settings.items():
        if lqs == [None] * len(lqs):
            continue
        kernel = get_kernel(inner, p)
        new = set_kernel(new, p, segment_record(
            lqs, lambda lq: records[(p, lq)] if lq is not None else FloatKernel(jnp.asarray(kernel))))
    new = set_attention_records(new, attention_records(inner, config))  # attn_bits rules (quant/attention.py)
    out = rewrap_params(new, wrapped)
    return (out, stats) if return_stats else out


def quantized_params_template(params: Mapping[str, Any], config: QuantConfig,
                              plan: MixedPrecisionPlan | None = None, *, model: nn.Module | None = None) -> dict:
    """The structure :func:`quantize_params` would produce (with the same ``config`` and ``plan``), with
    ``jax.ShapeDtypeStruct`` leaves for the records (no calibration, no compute) — a restore target
    for checkpoints (``flax.serialization.from_bytes``/orbax) of quantized params. ``params`` may
    itself be abstract (e.g. ``jax.eval_shape(model.init, ...)``)."""
    inner, wrapped = unwrap_params(params)
    if find_family(model) is not None:
        config = config.for_model(model, dense_paths(inner))
    cfgs = _segment_configs(config, plan)
    new = inner
    for p in dense_paths(inner):
        lqs = [record_layer(_fitted(c.resolve(p), get_kernel(inner, p))) for c in cfgs]
        if lqs == [None] * len(lqs):
            continue
        shape = tuple(get_kernel(inner, p).shape)
        new = set_kernel(new, p, segment_record(
            lqs, lambda lq: weight_method(lq.w_method, p).template(shape, lq, p) if lq is not None
            else FloatKernel(jax.ShapeDtypeStruct(shape, jnp.float32)), abstract=True))
    new = set_attention_records(new, attention_records(inner, config))  # static records: no arrays
    return rewrap_params(new, wrapped)


def set_backend(params: Any, backend: str) -> Any:
    """Every :class:`QuantizedWeight` (and quantized attention) in ``params`` switched to ``backend`` (same integers)."""
    kinds = (QuantizedWeight, QuantizedAttention)
    return jax.tree_util.tree_map(
        lambda v: v.with_backend(backend) if isinstance(v, kinds) else v,
        params,
        is_leaf=lambda v: isinstance(v, kinds),
    )


def quantization_summary(params: Mapping[str, Any]) -> dict[str, str]:
    """``{path: "W4A8 channel/token +smooth +rot [xla]" | "float"}`` for every Dense (for logs/tests)."""
    out = {}
    for p, k in dense_kernels(params).items():
        if hasattr(k, "variants"):  # segmented.SegmentedWeight: one entry per segment
            table = [int(i) for i in np.asarray(k.segment_variant)]
            out[p] = "segments: " + " | ".join(_record_summary(k.variants[i]) for i in table)
            continue
        out[p] = _record_summary(k)
    return out


def _record_summary(k: Any) -> str:
    if isinstance(getattr(k, "base", None), QuantizedWeight):  # a record wrapping one (Q-VDiT's TQEWeight)
        return _record_summary(k.base) + f" +{type(k).__name__}"
    if not isinstance(k, QuantizedWeight):
        return "float"
    lq = k.layer
    a = f"A{lq.a_bits}" if lq.a_bits else "A16"
    extra = (" +smooth" if k.smooth is not None else "") + (" +rot" if k.hadamard_signs is not None else "") + (
        " +fold" if lq.fold_heads else "")
    return f"W{lq.w_bits}{a} {lq.w_granularity}/{lq.a_granularity}{extra} [{lq.backend}]"


__all__ = [
    "DEFAULT_PRESET",
    "build_records",
    "calibration_stats",
    "dense_paths",
    "model_of",
    "quantization_summary",
    "quantize_params",
    "quantized_params_template",
    "set_backend",
]

"""End-to-end post-training quantization of a params tree: ``quantize_params``.

Pipeline (ViDiT-Q "new" code, quantize-once variant)::

    paths   = every Dense in the params tree (a dict holding a 2-D "kernel")
    layer   = config.resolve(path)                        (None -> stays float)
    A       = collect_stats(...)  channel absmax of each Dense input over all calibration batches
    s, h    = balance_for_layer(kernel, layer, A, key=layer_key(config.seed, path))
    [static activation scales: second calibration pass on the balanced inputs x' = (x/s)·R]
    kernel  -> quantize_weight(kernel, layer, smooth=s, hadamard_signs=h, act_scale=...)

Calibration runs only if some selected layer needs it (smoothing or static activation scales).
The result is the same params tree with selected ``kernel`` leaves replaced by
:class:`~vidq_jax.quant.record.QuantizedWeight`; ``models.layers.Dense`` dispatches on it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.quant.balance import balance_for_layer, layer_key
from vidq_jax.quant.calibrate import LayerStats, collect_stats
from vidq_jax.quant.config import LayerQuant, QuantConfig, check_rules
from vidq_jax.quant.record import QuantizedWeight, quantize_weight, static_act_params


# One XLA compile per distinct (shape, LayerQuant) — the 28 blocks of a DiT share a handful — instead
# of one compile per eager op.
_quantize_weight_jit = jax.jit(quantize_weight, static_argnames=("layer", "name"))


@functools.partial(jax.jit, static_argnames=("layer", "where"))
def _balance_jit(kernel, layer, absmax, key, where):
    return balance_for_layer(kernel, layer, absmax, key=key, where=where)


def dense_paths(params: Mapping[str, Any]) -> list[str]:
    """Paths (``"blocks_3/attn/qkv"``) of every Dense-like node: a mapping with a 2-D ``kernel``
    (float array or already a quantized record: anything with ``quantized_dense``). Conv kernels
    (rank > 2) are skipped."""
    out: list[str] = []

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        k = node.get("kernel")
        if hasattr(k, "quantized_dense") or (k is not None and getattr(k, "ndim", 0) == 2):
            out.append("/".join(prefix))
        for name, child in node.items():
            if isinstance(child, Mapping):
                walk(child, prefix + (str(name),))

    walk(params, ())
    return out


def _get(params: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node = params
    for part in path.split("/"):
        node = node[part]
    return node


def _set_kernel(params: Mapping[str, Any], path: str, value: Any) -> dict:
    """Functional update of ``params[...path...]["kernel"]`` (copies only the dicts on the path)."""
    parts = path.split("/")

    def rec(node: Mapping[str, Any], i: int) -> dict:
        new = dict(node)
        if i == len(parts):
            new["kernel"] = value
        else:
            new[parts[i]] = rec(node[parts[i]], i + 1)
        return new

    return rec(params, 0)


def _strip_params_collection(params: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    if set(params) == {"params"}:
        return params["params"], True
    return params, False


def _resolve_layers(inner: Mapping[str, Any], config: QuantConfig, paths: list[str]) -> dict[str, LayerQuant]:
    """``{path: LayerQuant}`` of every layer ``config`` quantizes (rules checked, warnings emitted)."""
    check_rules(config, paths)
    layers: dict[str, LayerQuant] = {}
    for p in paths:
        lq = config.resolve(p)
        if lq is None:
            continue
        if hasattr(_get(inner, p)["kernel"], "quantized_dense"):
            raise ValueError(f"layer {p!r} is already quantized")
        layers[p] = lq
    return layers


def calibration_stats(
    model: nn.Module,
    params: Mapping[str, Any],
    calib_batches: Iterable | None,
    layers: Mapping[str, LayerQuant],
    config_name: str = "",
    stats: Mapping[str, LayerStats] | None = None,
) -> tuple[dict[str, LayerStats], list]:
    """Statistics of the layers among ``layers`` that need calibration (``({}, [])`` if none) and
    the materialised batch list (reused by the static-scale pass). Precomputed ``stats`` covering
    those layers are reused (no calibration pass)."""
    calib = [p for p, lq in layers.items() if lq.needs_calibration]
    if not calib:
        return {}, []
    if stats is not None and all(p in stats for p in calib):
        static = any(layers[p].a_static for p in calib)
        if static and calib_batches is None:
            raise ValueError(f"config {config_name!r}: static activation scales need calib_batches even with stats")
        return dict(stats), list(calib_batches) if static else []
    if calib_batches is None:
        raise ValueError(f"config {config_name!r} needs calibration data for layers such as {calib[:3]}")
    batches = list(calib_batches)  # consumed twice when static scales of balanced layers are needed
    return collect_stats(model, params, batches, paths=calib), batches


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
        out[(p, lq)] = _balance_jit(_get(inner, p)["kernel"], lq, absmax, layer_key(config.seed, p), "")
    for (pat, alpha, rotate), members in groups.items():
        key_lq = LayerQuant(smooth_alpha=alpha, rotate=rotate)
        kernels = [jnp.asarray(_get(inner, p)["kernel"]) for p in members]
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
    model: nn.Module,
    config: QuantConfig,
    stats: Mapping[str, LayerStats],
    batches: list,
) -> dict[tuple[str, LayerQuant], QuantizedWeight]:
    """Quantized records of ``(path, layer)`` items (a path may appear with several settings, e.g.
    the bit-widths of a mixed-precision plan; they share the layer's smoothing and rotation).
    ``stats``/``batches`` from :func:`calibration_stats`."""
    balance = _shared_balance(inner, items, stats, config)
    post = {p: balance[(p, lq)] for p, lq in items if lq.a_static and any(v is not None for v in balance[(p, lq)])}
    post_stats = collect_stats(model, inner, batches, paths=list(post), transforms=post) if post else {}
    out: dict[tuple[str, LayerQuant], QuantizedWeight] = {}
    for p, lq in items:
        kernel = _get(inner, p)["kernel"]
        smooth, signs = balance[(p, lq)]
        a_scale = a_zp = None
        if lq.a_static:
            st = post_stats.get(p, stats.get(p))
            a_scale, a_zp = static_act_params(st.amax if lq.a_symmetric else (st.min, st.max), lq)
        lq.check_in_features(kernel.shape[0], p)  # clear error naming the layer, before tracing
        out[(p, lq)] = _quantize_weight_jit(
            kernel, lq, smooth=smooth, hadamard_signs=signs, act_scale=a_scale, act_zero_point=a_zp, name=""
        )
    return out


def quantize_params(
    params: Mapping[str, Any],
    calib_batches: Iterable | None = None,
    *,
    model: nn.Module,
    config: QuantConfig,
    return_stats: bool = False,
    stats: Mapping[str, LayerStats] | None = None,
):
    """Quantize every Dense selected by ``config`` (see module docstring).

    ``params``: the model's ``params`` dict (a ``{"params": ...}`` wrapper is accepted and kept).
    ``calib_batches``: iterable of model-input dicts, ``(name, dict)`` pairs or
    :class:`vidq_jax.calibration.CalibBatch` records; required only when a selected layer smooths or
    uses a static activation scale (empty iterator -> ``ValueError``).
    ``stats``: statistics from an earlier ``return_stats=True`` call (or :func:`collect_stats`) to
    reuse instead of a calibration pass (e.g. several configs on the same data).
    Returns the new params (and ``{path: LayerStats}`` when ``return_stats``).
    """
    inner, wrapped = _strip_params_collection(params)
    paths = dense_paths(inner)
    if not paths:
        raise ValueError("no Dense kernels found in params (expected dicts holding a 2-D 'kernel')")
    layers = _resolve_layers(inner, config, paths)
    stats, batches = calibration_stats(model, inner, calib_batches, layers, config.name, stats)
    records = build_records(inner, list(layers.items()), model=model, config=config, stats=stats, batches=batches)
    new = inner
    for p, lq in layers.items():
        new = _set_kernel(new, p, records[(p, lq)])
    out = {"params": new} if wrapped else new
    return (out, stats) if return_stats else out


def record_template(kernel_shape: tuple[int, int], lq: LayerQuant, where: str = "") -> QuantizedWeight:
    """Abstract :class:`QuantizedWeight` (``jax.ShapeDtypeStruct`` leaves) of a ``(K, N)`` kernel."""
    k = kernel_shape[0]
    f32 = jnp.float32
    vec = jax.ShapeDtypeStruct((k,), f32)
    scalar = jax.ShapeDtypeStruct((), f32)
    args = (
        jax.ShapeDtypeStruct(tuple(kernel_shape), f32),
        vec if lq.smooth_alpha is not None else None,
        vec if lq.rotate else None,
        scalar if lq.a_static else None,
        jax.ShapeDtypeStruct((), jnp.int32) if lq.a_static and not lq.a_symmetric else None,
    )
    lq.check_in_features(k, where)
    return jax.eval_shape(
        lambda w, s, h, a, z: quantize_weight(w, lq, smooth=s, hadamard_signs=h, act_scale=a, act_zero_point=z), *args
    )


def quantized_params_template(params: Mapping[str, Any], config: QuantConfig) -> dict:
    """The structure :func:`quantize_params` would produce, with ``jax.ShapeDtypeStruct`` leaves
    for the records (no calibration, no compute) — a restore target for checkpoints
    (``flax.serialization.from_bytes``/orbax) of quantized params. ``params`` may itself be abstract
    (e.g. ``jax.eval_shape(model.init, ...)``)."""
    inner, wrapped = _strip_params_collection(params)
    new = inner
    for p in dense_paths(inner):
        lq = config.resolve(p)
        if lq is None:
            continue
        new = _set_kernel(new, p, record_template(tuple(_get(inner, p)["kernel"].shape), lq, p))
    return {"params": new} if wrapped else new


def set_backend(params: Any, backend: str) -> Any:
    """Every :class:`QuantizedWeight` in ``params`` switched to ``backend`` (same integers)."""
    return jax.tree_util.tree_map(
        lambda v: v.with_backend(backend) if isinstance(v, QuantizedWeight) else v,
        params,
        is_leaf=lambda v: isinstance(v, QuantizedWeight),
    )


def quantization_summary(params: Mapping[str, Any]) -> dict[str, str]:
    """``{path: "W4A8 channel/token +smooth +rot [xla]" | "float"}`` for every Dense (for logs/tests)."""
    inner, _ = _strip_params_collection(params)
    out = {}
    for p in dense_paths(inner):
        k = _get(inner, p)["kernel"]
        if hasattr(k, "variants"):  # mixed_precision.SegmentedWeight: one entry per segment
            table = [int(i) for i in np.asarray(k.segment_variant)]
            out[p] = "segments: " + " | ".join(_record_summary(k.variants[i]) for i in table)
            continue
        out[p] = _record_summary(k)
    return out


def _record_summary(k: Any) -> str:
    if not isinstance(k, QuantizedWeight):
        return "float"
    lq = k.layer
    a = f"A{lq.a_bits}" if lq.a_bits else "A16"
    extra = (" +smooth" if k.smooth is not None else "") + (" +rot" if k.hadamard_signs is not None else "")
    return f"W{lq.w_bits}{a} {lq.w_granularity}/{lq.a_granularity}{extra} [{lq.backend}]"


__all__ = [
    "build_records",
    "calibration_stats",
    "dense_paths",
    "quantization_summary",
    "quantize_params",
    "quantized_params_template",
    "record_template",
    "set_backend",
]

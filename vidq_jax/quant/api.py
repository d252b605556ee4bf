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
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
    (float array or already a :class:`QuantizedWeight`). Conv kernels (rank > 2) are skipped."""
    out: list[str] = []

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        k = node.get("kernel")
        if isinstance(k, QuantizedWeight) or (k is not None and getattr(k, "ndim", 0) == 2):
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


def quantize_params(
    params: Mapping[str, Any],
    calib_batches: Iterable | None = None,
    *,
    model: nn.Module,
    config: QuantConfig,
    return_stats: bool = False,
):
    """Quantize every Dense selected by ``config`` (see module docstring).

    ``params``: the model's ``params`` dict (a ``{"params": ...}`` wrapper is accepted and kept).
    ``calib_batches``: iterable of model-input dicts or ``(name, dict)`` pairs; required only when a
    selected layer smooths or uses a static activation scale (empty iterator -> ``ValueError``).
    Returns the new params (and ``{path: LayerStats}`` when ``return_stats``).
    """
    inner, wrapped = _strip_params_collection(params)
    paths = dense_paths(inner)
    if not paths:
        raise ValueError("no Dense kernels found in params (expected dicts holding a 2-D 'kernel')")
    check_rules(config, paths)
    layers: dict[str, LayerQuant] = {}
    for p in paths:
        lq = config.resolve(p)
        if lq is None:
            continue
        if isinstance(_get(inner, p)["kernel"], QuantizedWeight):
            raise ValueError(f"layer {p!r} is already quantized")
        layers[p] = lq

    calib = [p for p, lq in layers.items() if lq.needs_calibration]
    stats: dict[str, LayerStats] = {}
    batches: list = []
    if calib:
        if calib_batches is None:
            raise ValueError(f"config {config.name!r} needs calibration data for layers such as {calib[:3]}")
        batches = list(calib_batches)  # consumed twice when static scales of balanced layers are needed
        stats = collect_stats(model, inner, batches, paths=calib)

    balance: dict[str, tuple] = {}
    for p, lq in layers.items():
        kernel = _get(inner, p)["kernel"]
        absmax = jnp.asarray(stats[p].absmax) if p in stats else None
        balance[p] = _balance_jit(kernel, lq, absmax, layer_key(config.seed, p), "")

    static = [p for p, lq in layers.items() if lq.a_static]
    post = {p: balance[p] for p in static if any(v is not None for v in balance[p])}
    post_stats = collect_stats(model, inner, batches, paths=list(post), transforms=post) if post else {}

    new = inner
    for p, lq in layers.items():
        kernel = _get(inner, p)["kernel"]
        smooth, signs = balance[p]
        a_scale = a_zp = None
        if lq.a_static:
            st = post_stats.get(p, stats.get(p))
            a_scale, a_zp = static_act_params(st.amax if lq.a_symmetric else (st.min, st.max), lq)
        lq.check_in_features(kernel.shape[0], p)  # clear error naming the layer, before tracing
        rec = _quantize_weight_jit(
            kernel, lq, smooth=smooth, hadamard_signs=signs, act_scale=a_scale, act_zero_point=a_zp, name=""
        )
        new = _set_kernel(new, p, rec)
    out = {"params": new} if wrapped else new
    return (out, stats) if return_stats else out


def quantized_params_template(params: Mapping[str, Any], config: QuantConfig) -> dict:
    """The structure :func:`quantize_params` would produce, with ``jax.ShapeDtypeStruct`` leaves
    for the records (no calibration, no compute) — a restore target for checkpoints
    (``flax.serialization.from_bytes``/orbax) of quantized params."""
    inner, wrapped = _strip_params_collection(params)
    f32 = jnp.float32
    new = inner
    for p in dense_paths(inner):
        lq = config.resolve(p)
        if lq is None:
            continue
        kernel = _get(inner, p)["kernel"]
        k = kernel.shape[0]
        vec = jax.ShapeDtypeStruct((k,), f32)
        scalar = jax.ShapeDtypeStruct((), f32)
        args = (
            jax.ShapeDtypeStruct(kernel.shape, f32),
            vec if lq.smooth_alpha is not None else None,
            vec if lq.rotate else None,
            scalar if lq.a_static else None,
            jax.ShapeDtypeStruct((), jnp.int32) if lq.a_static and not lq.a_symmetric else None,
        )
        lq.check_in_features(k, p)
        rec = jax.eval_shape(
            lambda w, s, h, a, z, lq=lq: quantize_weight(w, lq, smooth=s, hadamard_signs=h, act_scale=a,
                                                         act_zero_point=z),
            *args,
        )
        new = _set_kernel(new, p, rec)
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
        if not isinstance(k, QuantizedWeight):
            out[p] = "float"
            continue
        lq = k.layer
        a = f"A{lq.a_bits}" if lq.a_bits else "A16"
        extra = (" +smooth" if k.smooth is not None else "") + (" +rot" if k.hadamard_signs is not None else "")
        out[p] = f"W{lq.w_bits}{a} {lq.w_granularity}/{lq.a_granularity}{extra} [{lq.backend}]"
    return out


__all__ = ["dense_paths", "quantization_summary", "quantize_params", "quantized_params_template", "set_backend"]

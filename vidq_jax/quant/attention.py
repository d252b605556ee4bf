"""Quantized attention as a quantization rule: the per-layer record of the attention seam.

A rule key ``attn_bits=8`` (with ``attn_pv="bf16"`` (default) or ``"fp8"``, and ``attn_smooth_q`` ``True``
(default) or ``False``) in a :class:`~vidq_jax.quant.config.LayerRule`
selects the attention of the modules whose query projection the rule matches — ``<module>/qkv`` (self and
temporal attention) or ``<module>/q_linear`` (cross-attention) — so ``LayerRule("group:self_attn", attn_bits=8)``
quantizes the spatial self-attention of every block (presets ``viditq-w8a8-qattn``, ``w8a8-qattn``). A rule
holding only attention keys leaves the linear layers it matches as they are; ``settings=None`` rules and the
``keep_float`` patterns make the attention float like the linears. The last matching rule wins per key.

:func:`vidq_jax.quant.quantize_params` writes a :class:`QuantizedAttention` under ``params[module]["attention"]``
(:data:`models.attention.RECORD_KEY`); the models then call its :meth:`QuantizedAttention.attend` instead of
the float attention. The record has no arrays (the scales are dynamic): its settings are static pytree
metadata, rebuilt from the recipe in ``model.json`` when a quantized folder is loaded.

Numerics: :func:`pallas_kernels.quant_attention_ref` (SageAttention-style: K smoothing and Q smoothing with
the exact ``q̄·Kᵀ`` term added back, INT8 ``Q·Kᵀ`` with per-token Q and K scales, float32 online softmax,
bf16 or FP8 e4m3 ``P·V``). Why these defaults (bf16 ``P·V``, Q smoothing on): the measurements in
``pallas_kernels/ops/quant_attention/NOTES.md`` — FP8 ``P·V`` triples the attention's share of the model
error on the bundled models and is not faster in today's Triton kernel; Q smoothing (one mean per 128-query
tile) removes 8–16 % of the INT8 ``Q·Kᵀ`` error for one per-key logit bias per tile. Backends (the record's
``backend``, resolved by :func:`vidq_jax.quant.backends.resolve` when traced): ``pallas`` runs the
Pallas-Triton kernel (its CPU fallback is the reference), ``xla`` and ``simulate`` the jitted reference.
Temporal attention runs the reference in every backend (few frames: no kernel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from models import attention as attention_seam
from vidq_jax.quant import backends

ATTN_BITS: tuple[int, ...] = (8,)
ATTN_PV: tuple[str, ...] = ("bf16", "fp8")
ATTENTION_KEYS: tuple[str, ...] = ("attn_bits", "attn_pv", "attn_smooth_q")
"""Rule keys that configure attention (not fields of :class:`~vidq_jax.quant.config.LayerQuant`)."""

# query projections that identify an attention module in a params tree, and the kind of attention
QUERY_PROJECTIONS: tuple[str, ...] = ("qkv", "q_linear")


def check_attention_setting(key: str, value: Any) -> None:
    """ValueError naming ``key`` and the allowed values for a bad attention rule setting."""
    if key == "attn_bits":
        if value is not None and (isinstance(value, bool) or value not in ATTN_BITS):
            raise ValueError(f"attn_bits={value!r} unsupported; choose one of {ATTN_BITS} or None (float attention)")
    elif key == "attn_pv":
        if value not in ATTN_PV:
            raise ValueError(f"attn_pv={value!r} unknown; choose one of {ATTN_PV}")
    elif key == "attn_smooth_q":
        if not isinstance(value, bool):
            raise ValueError(f"attn_smooth_q={value!r} must be True (subtract the mean query) or False")
    else:
        raise ValueError(f"{key!r} is not an attention setting; known: {ATTENTION_KEYS}")


@struct.dataclass
class QuantizedAttention:
    """Per-layer quantized attention (``models.attention`` record): INT8 ``Q·Kᵀ`` (per-token Q scales after
    subtracting the mean query if ``smooth_q``, ``k_block``-token K scales after subtracting the mean key),
    float32 softmax, ``pv`` ``P·V``."""

    bits: int = struct.field(pytree_node=False, default=8)
    pv: str = struct.field(pytree_node=False, default="bf16")
    q_block: int = struct.field(pytree_node=False, default=1)
    k_block: int = struct.field(pytree_node=False, default=1)
    smooth_k: bool = struct.field(pytree_node=False, default=True)
    smooth_q: bool = struct.field(pytree_node=False, default=True)
    backend: str = struct.field(pytree_node=False, default="auto")

    def __post_init__(self) -> None:
        check_attention_setting("attn_bits", self.bits)
        check_attention_setting("attn_pv", self.pv)
        check_attention_setting("attn_smooth_q", self.smooth_q)
        backends.check(self.backend)

    def with_backend(self, backend: str) -> "QuantizedAttention":
        return self.replace(backend=backends.check(backend))

    def describe(self) -> str:
        return f"QK int{self.bits}{'' if self.smooth_q else ' (no Q smoothing)'} / PV {self.pv} [{self.backend}]"

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
               kind: str) -> jax.Array:
        kernels = backends.kernels
        if kernels is None:
            backends.log_once("quantized attention runs in float: the kernel package (and its reference) "
                              "cannot be imported")
            return attention_seam.reference_attention(q, k, v, key_mask) if kind != "temporal" else \
                attention_seam.reference_frame_attention(q, k, v)
        be = backends.resolve(self.backend)
        kw = dict(pv=self.pv, q_block=self.q_block, k_block=self.k_block, smooth_k=self.smooth_k,
                  smooth_q=self.smooth_q)
        if kind == "temporal":  # (B, T, S, H, D): each position over its frames, as (B·S, T, H, D) sequences
            b, t, s, h, d = q.shape
            seq = lambda a: jnp.moveaxis(a, 2, 1).reshape(b * s, t, h, d)  # noqa: E731
            out = kernels.quant_attention(seq(q), seq(k), seq(v), backend="xla", **kw)
            return jnp.moveaxis(out.reshape(b, s, t, h, d), 1, 2)
        return kernels.quant_attention(q, k, v, key_mask, backend="auto" if be == "pallas" else "xla", **kw)


def _node(params: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node = params
    for part in path.split("/") if path else ():
        node = node[part]
    return node


def attention_modules(params: Mapping[str, Any]) -> dict[str, str]:
    """``{module path: query-projection Dense path}`` of every attention module of a params tree (a node
    holding a ``qkv`` or ``q_linear`` Dense), e.g. ``{"blocks_0/attn": "blocks_0/attn/qkv"}``."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        for name in QUERY_PROJECTIONS:
            child = node.get(name)
            if isinstance(child, Mapping) and "kernel" in child:
                out["/".join(prefix)] = "/".join(prefix + (name,))
                break
        for name, child in node.items():
            if isinstance(child, Mapping):
                walk(child, prefix + (str(name),))

    walk(params, ())
    return out


def resolve_attention(config: Any, path: str) -> dict[str, Any] | None:
    """The attention settings (``{"attn_bits": 8, "attn_pv": ..., ...}``) that ``config``'s rules give the
    attention whose query projection is the Dense ``path``; ``None`` = float attention."""
    eff: dict[str, Any] | None = None
    for rule in config.rules:
        if not config.matches(rule.pattern, path):
            continue
        if rule.settings is None:
            eff = None
            continue
        extra = {k: v for k, v in rule.settings if k in ATTENTION_KEYS}
        if extra:
            eff = {**(eff or {}), **extra}
    if eff is None or eff.get("attn_bits") is None:
        return None
    if any(config.matches(p, path) for p in config.keep_float):
        return None
    return eff


def attention_records(params: Mapping[str, Any], config: Any) -> dict[str, QuantizedAttention]:
    """``{module path: record}`` for the attention modules ``config`` quantizes (its groups bound to the
    model). The record's backend is the query projection's (or the config default's) backend."""
    out = {}
    for module, proj in attention_modules(params).items():
        eff = resolve_attention(config, proj)
        if eff is None:
            continue
        layer = config.resolve(proj) or config.default
        backend = layer.backend if layer is not None else "auto"
        out[module] = QuantizedAttention(bits=int(eff["attn_bits"]), pv=eff.get("attn_pv", ATTN_PV[0]),
                                         smooth_q=eff.get("attn_smooth_q", True), backend=backend)
    return out


def set_attention_records(params: Mapping[str, Any], records: Mapping[str, QuantizedAttention]) -> Mapping[str, Any]:
    """``params`` with each record under ``params[module][RECORD_KEY]`` (functional; only the dicts on the
    paths are copied). A module that already holds one is refused (ValueError naming it)."""
    key = attention_seam.RECORD_KEY
    for module, rec in records.items():
        if key in _node(params, module):
            raise ValueError(f"attention of {module!r} is already quantized")
        parts = module.split("/") if module else []

        def put(node: Mapping[str, Any], i: int, rec=rec, parts=parts) -> dict:
            new = dict(node)
            if i == len(parts):
                new[key] = rec
            else:
                new[parts[i]] = put(node[parts[i]], i + 1)
            return new

        params = put(params, 0)
    return params


def attention_summary(params: Mapping[str, Any]) -> dict[str, str]:
    """``{module path: "QK int8 / PV bf16 [auto]"}`` for every quantized attention of ``params``."""
    key = attention_seam.RECORD_KEY
    return {m: _node(params, m)[key].describe() for m in attention_modules(params)
            if isinstance(_node(params, m).get(key), QuantizedAttention)}


__all__ = [
    "ATTENTION_KEYS",
    "ATTN_BITS",
    "ATTN_PV",
    "QuantizedAttention",
    "attention_modules",
    "attention_records",
    "attention_summary",
    "check_attention_setting",
    "resolve_attention",
    "set_attention_records",
]

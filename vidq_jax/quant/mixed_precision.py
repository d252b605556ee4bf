"""Timestep-segment mixed precision: the plan format, the segmented weight record, the sampler
wiring and the published Open-Sora 1.0 W4A8-MP plan.

Plan (:class:`MixedPrecisionPlan`, JSON-serialisable): the sampling steps (sampling order,
``step = 0`` is the noisiest) are cut into segments at ``boundaries``; ``rules`` are
``(layer regex, weight bits, segments)`` triples (:class:`BitsRule`), applied after the base
:class:`~vidq_jax.quant.config.QuantConfig`'s rules, the last matching rule winning (the base
config's ``keep_float`` still wins over everything). ``plan.config_for_segment(base, s)`` is the
plain :class:`QuantConfig` of segment ``s``.

Runtime design (no retrace per step, no model change):

* :func:`quantize_params_mp` quantizes each layer once per DISTINCT setting it has over the
  segments (all variants share the layer's smoothing and rotation). A layer whose setting never
  changes gets a plain :class:`~vidq_jax.quant.record.QuantizedWeight`; otherwise its ``kernel``
  leaf becomes a :class:`SegmentedWeight`: a tuple of variant records, a traced ``(S,)`` table
  segment → variant, and a traced scalar ``segment``. Its ``quantized_dense`` is one
  ``lax.switch`` over the variants (only the selected branch runs).
* :func:`segment_apply_fn` wraps ``model.apply``: it takes the sampler's ``step`` keyword
  (``step_kwarg="step"``), looks the segment up in the plan's step table, writes it into every
  :class:`SegmentedWeight` (:func:`with_segment`) and calls the unchanged model. The sampler's
  ``lax.scan`` traces the model once; the step index is a traced scalar, so switching weights per
  step costs nothing at trace time. :func:`sample` is :func:`vidq_jax.pipeline.sample` with that
  apply function.

Because the variant table is a traced leaf too, the same compiled sampler also serves the
sensitivity sweep (:mod:`vidq_jax.quant.sensitivity`), which flips table entries between runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from vidq_jax.quant.config import BLOCK_LAYERS, LayerQuant, LayerRule, QuantConfig, check_rules
from vidq_jax.quant.quantizers import check_bits
from vidq_jax.quant.record import apply_activation

# ------------------------------------------------------------------------------------------------
# layer groups (metric-decoupled sensitivity)
# ------------------------------------------------------------------------------------------------

LAYER_GROUPS: tuple[str, ...] = ("cross_attn", "spatial_attn", "temporal_attn", "ffn")
"""Layer groups of the paper's metric-decoupled analysis."""

_GROUP_PATTERNS: tuple[tuple[str, str], ...] = (
    ("cross_attn", r"(^|/)cross_attn/"),
    ("temporal_attn", r"(^|/)attn_temp/|(^|/)temporal_blocks_\d+/attn/"),  # STDiT / STDiT3
    ("spatial_attn", r"(^|/)attn/"),
    ("ffn", r"(^|/)mlp/"),
)


def layer_group(path: str) -> str | None:
    """Group of a Dense path (``None`` for layers outside the transformer blocks)."""
    return next((g for g, pat in _GROUP_PATTERNS if re.search(pat, path)), None)


def block_of(path: str) -> str:
    """The transformer block holding ``path`` (``"blocks_3"``, ``"temporal_blocks_0"``), or ``""``."""
    m = re.match(r"^(.*?blocks_\d+)/", path)
    return m.group(1) if m else ""


def unit_pattern(block: str, group: str) -> str:
    """Regex selecting the layers of ``group`` inside ``block`` (a sensitivity/allocation unit)."""
    sub = {
        "cross_attn": "cross_attn/",
        "spatial_attn": "attn/",
        "temporal_attn": "attn_temp/" if not block.startswith("temporal_blocks") else "attn/",
        "ffn": "mlp/",
    }[group]
    return f"^{re.escape(block)}/{sub}"


# ------------------------------------------------------------------------------------------------
# plan format
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BitsRule:
    """Layers matching ``pattern`` (``re.search``) get weight bits ``w_bits`` (``None`` = float) in
    the listed ``segments`` (empty = every segment). ``a_bits`` (optional) overrides activation bits."""

    pattern: str
    w_bits: int | None
    segments: tuple[int, ...] = ()
    a_bits: int | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"invalid layer regex {self.pattern!r}: {e}") from e
        if self.w_bits is not None:
            check_bits(self.w_bits, "w_bits")
        if self.a_bits is not None:
            check_bits(self.a_bits, "a_bits")
        object.__setattr__(self, "segments", tuple(int(s) for s in self.segments))

    def applies_to(self, segment: int) -> bool:
        return not self.segments or segment in self.segments

    def layer_rule(self) -> LayerRule:
        if self.w_bits is None:
            return LayerRule(self.pattern, None)
        settings: dict[str, Any] = {"w_bits": self.w_bits}
        if self.a_bits is not None:
            settings["a_bits"] = self.a_bits
        return LayerRule(self.pattern, settings)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionPlan:
    """Per-(layer regex × timestep segment) weight bits; see the module docstring.

    ``num_steps``: steps of the schedule the plan indexes; ``boundaries``: first step of each
    segment in sampling order (starts with 0, increasing). ``segment_of_step`` maps a step of a
    run with a different number of steps proportionally (``floor(step * num_steps / steps)``).
    """

    name: str
    num_steps: int
    boundaries: tuple[int, ...]
    rules: tuple[BitsRule, ...]
    description: str = ""

    def __post_init__(self) -> None:
        b = tuple(int(x) for x in self.boundaries)
        if not b or b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])) or b[-1] >= self.num_steps:
            raise ValueError(f"boundaries {b} must start at 0, increase and stay below num_steps={self.num_steps}")
        object.__setattr__(self, "boundaries", b)
        rules = tuple(r if isinstance(r, BitsRule) else BitsRule(**r) for r in self.rules)
        for r in rules:
            bad = [s for s in r.segments if not 0 <= s < len(b)]
            if bad:
                raise ValueError(f"rule {r.pattern!r}: segments {bad} out of range (plan has {len(b)})")
        object.__setattr__(self, "rules", rules)

    # -- segments ---------------------------------------------------------------------------
    @property
    def num_segments(self) -> int:
        return len(self.boundaries)

    def segment_steps(self, segment: int) -> range:
        """Steps (of ``num_steps``) in ``segment``."""
        end = self.boundaries[segment + 1] if segment + 1 < self.num_segments else self.num_steps
        return range(self.boundaries[segment], end)

    def segment_of_step(self, step: int, steps: int | None = None) -> int:
        steps = self.num_steps if steps is None else steps
        s = int(step) * self.num_steps // steps
        return int(np.searchsorted(np.asarray(self.boundaries), s, side="right") - 1)

    def step_segments(self, steps: int | None = None) -> tuple[int, ...]:
        """Segment of every step of a ``steps``-step run (default ``num_steps``)."""
        steps = self.num_steps if steps is None else steps
        return tuple(self.segment_of_step(i, steps) for i in range(steps))

    # -- bits ---------------------------------------------------------------------------------
    def segment_rules(self, segment: int) -> tuple[LayerRule, ...]:
        return tuple(r.layer_rule() for r in self.rules if r.applies_to(segment))

    def config_for_segment(self, base: QuantConfig, segment: int) -> QuantConfig:
        """The plain config of ``segment``: ``base`` + this segment's rules (they win)."""
        return base.replace(name=f"{base.name}+{self.name}[{segment}]", rules=base.rules + self.segment_rules(segment))

    def bits_table(self, paths: Iterable[str], base: QuantConfig) -> dict[str, tuple[int | None, ...]]:
        """``{path: (w_bits of segment 0, ..., S-1)}`` (``None`` = float)."""
        cfgs = [self.config_for_segment(base, s) for s in range(self.num_segments)]
        out = {}
        for p in paths:
            out[p] = tuple((lq.w_bits if (lq := c.resolve(p)) is not None else None) for c in cfgs)
        return out

    def average_bits(self, params: Mapping[str, Any], base: QuantConfig) -> float:
        """Weight bits per quantized weight element averaged over layers (by size) and steps."""
        from vidq_jax.quant.api import _get, _strip_params_collection, dense_paths

        inner, _ = _strip_params_collection(params)
        paths = dense_paths(inner)
        num = den = 0.0
        for p, bits in self.bits_table(paths, base).items():
            size = float(np.prod(_get(inner, p)["kernel"].shape))
            for s, b in enumerate(bits):
                if b is None:
                    continue
                w = size * len(self.segment_steps(s))
                num += w * b
                den += w
        return num / den if den else float("nan")

    def check(self, paths: Sequence[str], *, warn: bool = True) -> list[str]:
        """Rule patterns matching no layer (warns listing them, like :func:`check_rules`)."""
        return check_rules(QuantConfig(self.name, rules=tuple(r.layer_rule() for r in self.rules)), paths, warn=warn)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "boundaries": list(self.boundaries),
            "rules": [dataclasses.asdict(r) | {"segments": list(r.segments)} for r in self.rules],
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MixedPrecisionPlan":
        return cls(
            name=d["name"], num_steps=int(d["num_steps"]), boundaries=tuple(d["boundaries"]),
            rules=tuple(BitsRule(**r) for r in d["rules"]), description=d.get("description", ""),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "MixedPrecisionPlan":
        return cls.from_dict(json.loads(text))

    # -- published plans ----------------------------------------------------------------------
    @classmethod
    def opensora_v1_w4a8(cls, *, num_steps: int = 20) -> "MixedPrecisionPlan":
        """ViDiT-Q's shipped Open-Sora 1.0 W4A8-MP table (``t20_weight_4_mp.yaml`` + ``t20_act_8_mp.yaml``,
        20-step IDDPM; see viditq_method.md §5.3). Steps are in sampling order: the table's range
        19–15 (noisiest) is segment 0 here.

        | segment (steps) | table range | weights |
        |---|---|---|
        | 0 (0–4)   | 19–15 | every block layer W8 |
        | 1 (5–9)   | 14–10 | attention (spatial, temporal, cross) W4, ``mlp`` W8 |
        | 2 (10–14) | 9–5   | as segment 1 |
        | 3 (15–19) | 4–0   | as segment 1, plus ``blocks_23/attn_temp`` W8 |

        Activations A8 everywhere; embedders, ``t_block`` and the final layer stay float (base config).
        Layer names are this package's (fused ``attn/qkv`` for the table's split q, k, v).
        """
        if num_steps % 4:
            raise ValueError("the published plan splits the steps in 4 equal segments; num_steps must be a multiple of 4")
        q = num_steps // 4
        return cls(
            name="viditq-opensora1-w4a8-mp",
            num_steps=num_steps,
            boundaries=(0, q, 2 * q, 3 * q),
            rules=(
                BitsRule(BLOCK_LAYERS, 4, a_bits=8),
                BitsRule(r"(^|/)mlp/", 8),
                BitsRule(BLOCK_LAYERS, 8, segments=(0,)),
                BitsRule(r"^blocks_23/attn_temp/", 8, segments=(3,)),
            ),
            description="ViDiT-Q Open-Sora 1.0 W4A8-MP (t20_weight_4_mp.yaml / t20_act_8_mp.yaml)",
        )


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


@struct.dataclass
class FloatKernel:
    """A float kernel ``(K, N)`` behind the record interface (a "float" variant of a segment plan)."""

    kernel: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kernel.shape)

    def quantized_dense(self, x: jax.Array, bias: jax.Array | None = None, dtype: Any = None,
                        activation: str | None = None) -> jax.Array:
        out_dtype = jnp.dtype(dtype) if dtype is not None else x.dtype
        y = jnp.matmul(x.astype(jnp.float32), self.kernel.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        return apply_activation(y, activation).astype(out_dtype)


@struct.dataclass
class SegmentedWeight:
    """A Dense kernel whose variant (bits) depends on the timestep segment.

    ``variants``: records (:class:`QuantizedWeight` / :class:`FloatKernel`), same ``(K, N)``;
    ``segment_variant``: int32 ``(S,)`` variant of each segment; ``segment``: int32 scalar, the
    current segment (written per step by :func:`segment_apply_fn`). One ``lax.switch``.
    """

    variants: tuple
    segment_variant: jax.Array
    segment: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.variants[0].shape)

    @property
    def num_segments(self) -> int:
        return int(self.segment_variant.shape[0])

    def variant_of(self, segment: int) -> Any:
        return self.variants[int(np.asarray(self.segment_variant)[segment])]

    def quantized_dense(self, x: jax.Array, bias: jax.Array | None = None, dtype: Any = None,
                        activation: str | None = None) -> jax.Array:
        idx = jnp.asarray(self.segment_variant, jnp.int32)[jnp.asarray(self.segment, jnp.int32)]
        branches = [functools.partial(_variant_dense, v, bias=bias, dtype=dtype, activation=activation)
                    for v in self.variants]
        return jax.lax.switch(idx, branches, x)


def _variant_dense(variant: Any, x: jax.Array, *, bias: Any, dtype: Any, activation: str | None) -> jax.Array:
    return variant.quantized_dense(x, bias, dtype if dtype is not None else x.dtype, activation=activation)


def _is_segmented(v: Any) -> bool:
    return isinstance(v, SegmentedWeight)


def with_segment(params: Any, segment: jax.Array | int) -> Any:
    """``params`` with every :class:`SegmentedWeight` switched to ``segment`` (traceable)."""
    seg = jnp.asarray(segment, jnp.int32)
    return jax.tree_util.tree_map(lambda v: v.replace(segment=seg) if _is_segmented(v) else v, params,
                                  is_leaf=_is_segmented)


def segmented_layers(params: Any) -> list[SegmentedWeight]:
    return [v for v in jax.tree_util.tree_leaves(params, is_leaf=_is_segmented) if _is_segmented(v)]


# ------------------------------------------------------------------------------------------------
# quantization with a plan
# ------------------------------------------------------------------------------------------------


def quantize_params_mp(
    params: Mapping[str, Any],
    calib_batches: Iterable | None = None,
    *,
    model,
    config: QuantConfig,
    plan: MixedPrecisionPlan,
    return_stats: bool = False,
    stats: Mapping[str, Any] | None = None,
):
    """Quantize with per-segment settings ``plan.config_for_segment(config, s)``.

    Calibration runs once; each layer is quantized once per distinct setting over the segments.
    Layers float in some segments and quantized in others get a :class:`FloatKernel` variant. Run
    the result with :func:`segment_apply_fn` / :func:`sample` (a plain ``model.apply`` runs segment
    0). Unknown plan patterns warn (listing them). ``stats``: reuse calibration statistics (see
    :func:`~vidq_jax.quant.api.quantize_params`).
    """
    from vidq_jax.quant.api import (
        _get, _set_kernel, _strip_params_collection, build_records, calibration_stats, dense_paths,
    )

    inner, wrapped = _strip_params_collection(params)
    paths = dense_paths(inner)
    if not paths:
        raise ValueError("no Dense kernels found in params")
    plan.check(paths)
    check_rules(config, paths)
    seg_cfgs = [plan.config_for_segment(config, s) for s in range(plan.num_segments)]
    per_layer: dict[str, list[LayerQuant | None]] = {p: [c.resolve(p) for c in seg_cfgs] for p in paths}
    for p, lqs in per_layer.items():
        if any(lq is not None for lq in lqs) and hasattr(_get(inner, p)["kernel"], "quantized_dense"):
            raise ValueError(f"layer {p!r} is already quantized")
    union: dict[str, LayerQuant] = {}  # one calibrating setting per layer suffices: stats are per layer
    items: list[tuple[str, LayerQuant]] = []
    for p, lqs in per_layer.items():
        for lq in dict.fromkeys(x for x in lqs if x is not None):
            items.append((p, lq))
            if p not in union or lq.needs_calibration:
                union[p] = lq
    stats, batches = calibration_stats(model, inner, calib_batches, union, config.name, stats)
    records = build_records(inner, items, model=model, config=config, stats=stats, batches=batches)
    new = inner
    for p, lqs in per_layer.items():
        uniq = list(dict.fromkeys(lqs))
        if uniq == [None]:
            continue
        kernel = _get(inner, p)["kernel"]
        variants = [records[(p, lq)] if lq is not None else FloatKernel(jnp.asarray(kernel)) for lq in uniq]
        if len(variants) == 1:
            new = _set_kernel(new, p, variants[0])
            continue
        table = jnp.asarray([uniq.index(lq) for lq in lqs], jnp.int32)
        new = _set_kernel(new, p, SegmentedWeight(tuple(variants), table, jnp.zeros((), jnp.int32)))
    out = {"params": new} if wrapped else new
    return (out, stats) if return_stats else out


def quantized_params_template_mp(params: Mapping[str, Any], config: QuantConfig, plan: MixedPrecisionPlan) -> dict:
    """Abstract structure of :func:`quantize_params_mp`'s result (restore target; ``params`` may be
    abstract)."""
    from vidq_jax.quant.api import _get, _set_kernel, _strip_params_collection, dense_paths, record_template

    inner, wrapped = _strip_params_collection(params)
    seg_cfgs = [plan.config_for_segment(config, s) for s in range(plan.num_segments)]
    new = inner
    for p in dense_paths(inner):
        lqs = [c.resolve(p) for c in seg_cfgs]
        uniq = list(dict.fromkeys(lqs))
        if uniq == [None]:
            continue
        shape = tuple(_get(inner, p)["kernel"].shape)
        variants = [record_template(shape, lq, p) if lq is not None else
                    FloatKernel(jax.ShapeDtypeStruct(shape, jnp.float32)) for lq in uniq]
        if len(variants) == 1:
            new = _set_kernel(new, p, variants[0])
        else:
            i32 = jnp.int32
            new = _set_kernel(new, p, SegmentedWeight(tuple(variants), jax.ShapeDtypeStruct((plan.num_segments,), i32),
                                                      jax.ShapeDtypeStruct((), i32)))
    return {"params": new} if wrapped else new


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------

_APPLY_FNS: dict[tuple[int, tuple[int, ...]], tuple[Any, Callable]] = {}


def segment_apply_fn(model, step_segments: Sequence[int]) -> Callable:
    """``apply_fn(params, x, t, *, step, **cond)`` selecting segment ``step_segments[step]`` of
    every :class:`SegmentedWeight` before ``model.apply`` (use with the samplers'
    ``step_kwarg="step"``). Cached: the same function object for the same model and table."""
    table = tuple(int(s) for s in step_segments)
    key = (id(model), table)
    entry = _APPLY_FNS.get(key)
    if entry is None or entry[0] is not model:

        def apply_fn(params, x, t, step=None, **cond):
            if step is None:
                raise ValueError("segment_apply_fn needs the sampler's step index: pass step_kwarg='step'")
            seg = jnp.asarray(table, jnp.int32)[step]
            return model.apply({"params": with_segment(params, seg)}, x, t, **cond)

        entry = (model, apply_fn)
        _APPLY_FNS[key] = entry
    return entry[1]


def sample(
    model,
    params: Any,
    noise: jax.Array,
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None = None,
    *,
    plan: MixedPrecisionPlan | Sequence[int],
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    key: jax.Array | None = None,
    **sampler_kwargs: Any,
):
    """:func:`vidq_jax.pipeline.sample` for segment-planned params: the family's release sampler with
    :func:`segment_apply_fn` and ``step_kwarg="step"``. ``plan``: a plan (its step table is stretched
    to ``steps``) or an explicit per-step segment table."""
    from vidq_jax import pipeline

    n_steps = pipeline.sampler_settings(model, sampler=sampler, steps=steps, guidance_scale=guidance_scale)["steps"]
    table = plan.step_segments(n_steps) if isinstance(plan, MixedPrecisionPlan) else tuple(plan)
    if len(table) != n_steps:
        raise ValueError(f"segment table has {len(table)} entries for {n_steps} steps")
    return pipeline.sample(
        model, params, noise, cond, uncond, sampler=sampler, steps=n_steps, guidance_scale=guidance_scale,
        key=key, apply_fn=segment_apply_fn(model, table), step_kwarg="step", **sampler_kwargs,
    )


__all__ = [
    "BitsRule",
    "FloatKernel",
    "LAYER_GROUPS",
    "MixedPrecisionPlan",
    "SegmentedWeight",
    "block_of",
    "layer_group",
    "quantize_params_mp",
    "quantized_params_template_mp",
    "sample",
    "segment_apply_fn",
    "segmented_layers",
    "unit_pattern",
    "with_segment",
]

"""Timestep-segment mixed precision: the plan format and the published Open-Sora 1.0 W4A8-MP plan.

Plan (:class:`MixedPrecisionPlan`, JSON-serialisable): the sampling steps (sampling order,
``step = 0`` is the noisiest) are cut into segments at ``boundaries``; ``rules`` are
``(layer regex, weight bits, segments)`` triples (:class:`BitsRule`), applied after the base
:class:`~vidq_jax.quant.config.QuantConfig`'s rules, the last matching rule winning (the base
config's ``keep_float`` still wins over everything). ``plan.config_for_segment(base, s)`` is the
plain :class:`QuantConfig` of segment ``s``.

Quantize with ``vidq_jax.quant.quantize_params(..., plan=plan)`` (each layer once per distinct
setting over the segments; layers whose setting changes become
:class:`~vidq_jax.quant.segmented.SegmentedWeight` records) and sample with
``vidq_jax.pipeline.sample(..., plan=plan)``; :mod:`vidq_jax.quant.sensitivity` searches plans.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vidq_jax.quant.config import BLOCK_LAYERS, LayerRule, QuantConfig, check_rules
from vidq_jax.quant.quantizers import check_bits
from vidq_jax.quant.tree import dense_kernels


@dataclasses.dataclass(frozen=True)
class BitsRule:
    """Layers matching ``pattern`` (``re.search``) get weight bits ``w_bits`` (``None`` = float) in
    the listed ``segments`` (empty = every segment). ``a_bits`` (optional) overrides activation bits;
    ``group_size`` (optional) sets group quantization along ``C_in`` with that group size for the weight
    and the input activation alike (Q-DiT; what ``vidq search-groups`` writes)."""

    pattern: str
    w_bits: int | None
    segments: tuple[int, ...] = ()
    a_bits: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"invalid layer regex {self.pattern!r}: {e}") from e
        if self.w_bits is not None:
            check_bits(self.w_bits, "w_bits")
        if self.a_bits is not None:
            check_bits(self.a_bits, "a_bits")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ValueError(f"rule {self.pattern!r}: group_size={self.group_size!r} must be a positive integer")
        object.__setattr__(self, "segments", tuple(int(s) for s in self.segments))

    def applies_to(self, segment: int) -> bool:
        return not self.segments or segment in self.segments

    def layer_rule(self) -> LayerRule:
        if self.w_bits is None:
            return LayerRule(self.pattern, None)
        settings: dict[str, Any] = {"w_bits": self.w_bits}
        if self.a_bits is not None:
            settings["a_bits"] = self.a_bits
        if self.group_size is not None:
            settings.update(w_granularity="group", w_group_size=self.group_size, a_granularity="group",
                            a_group_size=self.group_size)
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
        kernels = dense_kernels(params)
        num = den = 0.0
        for p, bits in self.bits_table(kernels, base).items():
            size = float(np.prod(kernels[p].shape))
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


__all__ = ["BitsRule", "MixedPrecisionPlan"]

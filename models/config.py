"""Behaviour shared by the architecture config dataclasses (``PixArtConfig``, ``STDiTConfig``,
``STDiT3Config``): JSON round trip and construction from the original constructor arguments."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

# Constructor arguments of the originals that never change the inference math.
COMMON_NOOP_KEYS = frozenset(
    {
        "class_dropout_prob",
        "drop_path",
        "enable_flashattn",
        "enable_flash_attn",
        "enable_layernorm_kernel",
        "enable_sequence_parallelism",
        "freeze",
        "from_pretrained",
        "type",
    }
)


def as_tuples(v: Any) -> Any:
    """JSON lists back to (nested) tuples."""
    return tuple(as_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


class ConfigMixin:
    """Mixin for frozen config dataclasses: JSON round trip and construction from original kwargs."""

    NOOP_KEYS: ClassVar[frozenset] = COMMON_NOOP_KEYS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict):
        """Strict: every key must be a field (as written by :meth:`to_dict`)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**{k: as_tuples(v) for k, v in d.items()})

    @classmethod
    def from_original(cls, d: dict, **defaults: Any):
        """Lenient: from the original constructor kwargs (e.g. a fixture manifest's ``config``);
        keys in ``NOOP_KEYS`` are dropped, other unknown keys warned about."""
        fields = dataclasses.asdict(cls())  # type: ignore[call-overload]
        fields.update(defaults)
        unknown = []
        for k, v in d.items():
            if k in fields:
                fields[k] = as_tuples(v)
            elif k not in cls.NOOP_KEYS:
                unknown.append(k)
        if unknown:
            warnings.warn(f"{cls.__name__} keys not understood and ignored: {sorted(unknown)}", stacklevel=2)
        return cls(**fields)


class ModelConfig(ConfigMixin):
    """Mixin for the denoisers' frozen config dataclasses (``in_channels`` and ``pred_sigma`` fields)."""

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels  # type: ignore[attr-defined]

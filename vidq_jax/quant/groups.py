"""Layer groups of the metric-decoupled mixed-precision analysis (ViDiT-Q §5), read from the model family
registry (:mod:`models.families`): which block group a Dense path belongs to, its transformer block, and
the regex of one (block × group) unit.

Every function takes the model's :class:`~models.families.Family` (or a model instance); without one,
the registered families' own patterns decide (they agree on every path they share, tested).
"""

from __future__ import annotations

from typing import Any

from models.families import BLOCK_GROUPS, FAMILIES, Family, family_of, group_of_path

LAYER_GROUPS: tuple[str, ...] = BLOCK_GROUPS
"""Layer groups of the paper's metric-decoupled analysis: self-attention (spatial), cross-attention,
temporal attention, FFN."""


def _family(family: Family | Any | None) -> Family | None:
    if family is None or isinstance(family, Family):
        return family
    return family_of(family)


def layer_group(path: str, family: Family | Any | None = None) -> str | None:
    """Block group of a Dense path (``None`` for layers outside the transformer blocks)."""
    fam = _family(family)
    return fam.group_of(path) if fam is not None else group_of_path(path)


def block_of(path: str, family: Family | Any | None = None) -> str:
    """The transformer block holding ``path`` (``"blocks_3"``, ``"temporal_blocks_0"``), or ``""``."""
    fam = _family(family)
    for f in (fam,) if fam is not None else FAMILIES.values():
        if block := f.block_of(path):
            return block
    return ""


def unit_pattern(block: str, group: str, family: Family | Any | None = None) -> str:
    """Regex selecting the layers of ``group`` inside ``block`` (a sensitivity/allocation unit)."""
    fam = _family(family)
    if fam is not None:
        return fam.unit_pattern(block, group)
    return "|".join(f"(?:{f.unit_pattern(block, group)})" for f in FAMILIES.values())


__all__ = ["LAYER_GROUPS", "block_of", "layer_group", "unit_pattern"]

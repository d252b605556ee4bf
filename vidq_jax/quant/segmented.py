"""The segmented weight record: a Dense kernel whose variant (bits) depends on the timestep segment.

A layer whose setting changes over the segments of a
:class:`~vidq_jax.quant.plan.MixedPrecisionPlan` gets a :class:`SegmentedWeight` as its ``kernel``
leaf (built by ``vidq_jax.quant.quantize_params(..., plan=...)``): a tuple of variant records
(:class:`~vidq_jax.quant.record.QuantizedWeight`, or :class:`FloatKernel` where the layer is float),
a traced ``(S,)`` table segment → variant, and a traced scalar ``segment``. Its ``quantized_dense``
is one ``lax.switch`` over the variants (only the selected branch runs). It plugs into
``models.layers.Dense`` like any record (the ``quantized_dense`` protocol, see
:mod:`vidq_jax.quant.methods`); nothing in the models knows about segments.

Runtime (no retrace per step, no model change): :func:`segment_apply_fn` wraps ``model.apply``: it
takes the sampler's ``step`` keyword (``step_kwarg="step"``), looks the segment up in the plan's step
table, writes it into every :class:`SegmentedWeight` (:func:`with_segment`) and calls the unchanged
model. The sampler's ``lax.scan`` traces the model once; the step index is a traced scalar, so
switching weights per step costs nothing at trace time. ``vidq_jax.pipeline.sample(..., plan=...)``
samples with it. Because the variant table is a traced leaf too, the same compiled sampler also
serves the sensitivity sweep (:mod:`vidq_jax.quant.sensitivity`), which flips table entries between runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from models.layers import activate


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
        return activate(activation, y).astype(out_dtype)


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


def segment_record(settings: Sequence[Any], variant: Callable[[Any], Any], *, abstract: bool = False) -> Any:
    """The ``kernel`` leaf of a layer with one setting per segment (``None`` = float): ``variant(setting)``
    once per distinct setting; the only variant itself when the setting never changes, else a
    :class:`SegmentedWeight` (``abstract``: ``jax.ShapeDtypeStruct`` table and segment, a restore target)."""
    uniq = list(dict.fromkeys(settings))
    variants = [variant(s) for s in uniq]
    if len(variants) == 1:
        return variants[0]
    i32 = jnp.int32
    if abstract:
        return SegmentedWeight(tuple(variants), jax.ShapeDtypeStruct((len(settings),), i32), jax.ShapeDtypeStruct((), i32))
    table = jnp.asarray([uniq.index(s) for s in settings], i32)
    return SegmentedWeight(tuple(variants), table, jnp.zeros((), i32))


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


__all__ = ["FloatKernel", "SegmentedWeight", "segment_apply_fn", "segment_record", "segmented_layers", "with_segment"]

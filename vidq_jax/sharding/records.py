"""Quantized records on a mesh: run per shard, stored replicated or sharded along N.

A quantized Dense record (anything with ``quantized_dense``: :class:`~vidq_jax.quant.QuantizedWeight`
with its int8 / packed-int4 payload, scales, smoothing vector and rotation signs, a timestep-segmented
record, ...) computes with custom kernels (Pallas) that the partitioner cannot split. While a model
call on a mesh is traced, :func:`shard_records` wraps every record in a :class:`ShardedDense`, whose
``quantized_dense`` is a ``shard_map``: each device runs the record's own ``quantized_dense`` (the
Pallas kernels included) on its block of rows (``data``) and tokens (``seq``) with the whole weight;
per-layer attention records get :class:`~vidq_jax.sharding.attention.ShardedAttentionRecord`. The
wrappers are pytree nodes around the record, so tree maps over records (e.g. the segment switch of
:func:`vidq_jax.quant.segmented.with_segment`) still reach it.

Storage (:func:`place_params`): ``"replicate"`` (every device holds every weight; no traffic) or
``"shard"`` (the output-feature axis N of every weight, float kernel or quantized payload/scales, is
split over all devices; each layer's weight is gathered where it runs — memory per device / devices).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.layers import activate, split_columns
from vidq_jax.sharding.attention import Layout, ShardedAttentionRecord
from vidq_jax.sharding.mesh import AXES, DATA, SEQ, MeshError, axis, axis_size

PLACEMENTS: tuple[str, ...] = ("replicate", "shard")


def is_dense_record(v: Any) -> bool:
    return hasattr(v, "quantized_dense")


def is_attention_record(v: Any) -> bool:
    return hasattr(v, "attend") and not isinstance(v, (dict, type))


def _accepts(record: Any, keyword: str) -> bool:
    return keyword in inspect.signature(type(record).quantized_dense).parameters


@struct.dataclass
class ShardedDense:
    """A Dense record run per shard of ``layout`` (see the module docstring)."""

    record: Any
    layout: Layout = struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.record.shape)

    def x_spec(self, shape: tuple[int, ...]) -> P:
        """Rows on ``data`` (when they divide), the token axis of a ``(B, N, K)`` input on ``seq`` (when N
        divides; else the tokens are replicated over ``seq``)."""
        mesh = self.layout.mesh
        entries: list[str | None] = [None] * (len(shape) - 1)
        if entries and shape[0] % axis_size(mesh, DATA) == 0:
            entries[0] = axis(mesh, DATA)
        if len(entries) >= 2 and shape[1] % axis_size(mesh, SEQ) == 0:
            entries[1] = axis(mesh, SEQ)
        return P(*entries)

    def quantized_dense(self, x, bias=None, dtype=None, activation: str | None = None, splits: int = 1):
        rec = self.record
        kw: dict[str, Any] = {}
        fuse = activation is not None and _accepts(rec, "activation")
        if fuse:
            kw["activation"] = activation
        by_record = splits > 1 and _accepts(rec, "splits")
        if by_record:
            kw["splits"] = splits
        spec = self.x_spec(x.shape)

        def shard(x, bias, rec):
            y = rec.quantized_dense(x, bias, dtype, **kw)
            if activation is not None and not fuse:
                y = jax.tree_util.tree_map(lambda a: activate(activation, a), y)
            return tuple(y) if by_record else split_columns(y, splits)

        out_spec = tuple([spec] * splits) if splits > 1 else spec
        fn = jax.shard_map(shard, mesh=self.layout.mesh, in_specs=(spec, P(), P()), out_specs=out_spec,
                           check_vma=False)
        return fn(x, bias, rec)


@struct.dataclass
class FloatDense:
    """A float Dense kernel ``(K, N)`` behind the record interface, computing exactly as the float path
    of ``models.layers.Dense`` (in the layer's compute dtype): with params stored split along N
    (``"shard"``), wrapped in a :class:`ShardedDense` so that each layer's weight is gathered where it runs."""

    kernel: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kernel.shape)

    def quantized_dense(self, x, bias=None, dtype=None, activation: str | None = None):
        dtype = dtype or jnp.result_type(x.dtype, self.kernel.dtype)
        y = jnp.dot(x.astype(dtype), self.kernel.astype(dtype))
        if bias is not None:
            y = y + bias.astype(dtype)
        return activate(activation, y)


def shard_records(params: Any, layout: Layout, placement: str = "replicate") -> Any:
    """``params`` with every Dense record in a :class:`ShardedDense` and every attention record in a
    :class:`ShardedAttentionRecord`. Float Dense kernels are left to the partitioner, except with params
    stored split along N (``placement="shard"``): then they run as :class:`FloatDense` records too."""

    def wrap(v):
        if is_dense_record(v):
            return ShardedDense(v, layout)
        if is_attention_record(v):
            return ShardedAttentionRecord(v, layout)
        return v

    def visit(node: Any) -> Any:
        if isinstance(node, Mapping) and not is_dense_record(node):
            out = {k: visit(v) for k, v in node.items()}
            kernel = out.get("kernel")
            if placement == "shard" and isinstance(kernel, jax.Array) and kernel.ndim == 2:
                out["kernel"] = ShardedDense(FloatDense(kernel), layout)
            return out
        return jax.tree_util.tree_map(wrap, node, is_leaf=lambda v: is_dense_record(v) or is_attention_record(v))

    return visit(params)


# ------------------------------------------------------------------------------------------------ placement
def global_array(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` as a global array of ``sharding``; in a multi-process run every process passes the same
    host value and contributes its own devices' blocks."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _n_sharding(mesh: Mesh, shape: tuple[int, ...], n: int | None, axis: int | None = None) -> NamedSharding:
    """Axis ``axis`` (default: the first of size ``n``, the layer's output features) split over all
    devices when ``n`` divides over them; replicated otherwise."""
    devices = mesh.devices.size
    if axis is None and n is not None:
        axis = next((i for i, size in enumerate(shape) if size == n), None)
    if n and devices > 1 and n % devices == 0 and axis is not None and shape[axis] == n:
        spec: list[Any] = [None] * len(shape)
        spec[axis] = tuple(a for a in AXES if a in mesh.axis_names)
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def place_params(params: Any, mesh: Mesh, placement: str = "replicate") -> Any:
    """``params`` (float or quantized) on ``mesh``: every array replicated, or (``"shard"``) the
    output-feature axis N of each Dense weight (float kernel ``(K, N)``, bias ``(N,)``, a record's
    ``(N, K)`` payload and ``(N,)`` / ``(N, G)`` scales) split over all devices."""
    if placement not in PLACEMENTS:
        raise MeshError(f"param placement {placement!r} unknown; choose one of {PLACEMENTS}")
    if placement == "replicate":
        rep = replicated(mesh)
        return jax.tree_util.tree_map(lambda a: global_array(a, rep) if _is_array(a) else a, params)

    def place(node: Any, n: int | None) -> Any:
        if is_dense_record(node):
            n = int(node.shape[1])
            return jax.tree_util.tree_map(
                lambda a: global_array(a, _n_sharding(mesh, a.shape, n)) if _is_array(a) else a, node)
        if isinstance(node, Mapping):
            if "kernel" in node and _is_array(node["kernel"]) and np.ndim(node["kernel"]) == 2:
                n = int(np.shape(node["kernel"])[1])
            elif "kernel" in node and is_dense_record(node["kernel"]):
                n = int(node["kernel"].shape[1])
            else:
                n = None
            return {k: place(v, n if k in ("kernel", "bias") else None) for k, v in node.items()}
        if _is_array(node):  # a float kernel (K, N) or a bias (N,): N is the last axis
            return global_array(node, _n_sharding(mesh, np.shape(node), n, np.ndim(node) - 1 if n else None))
        return jax.tree_util.tree_map(lambda a: global_array(a, replicated(mesh)) if _is_array(a) else a, node)

    return place(params, None)


def _is_array(a: Any) -> bool:
    return isinstance(a, (jax.Array, np.ndarray, np.generic))


__all__ = ["PLACEMENTS", "FloatDense", "ShardedDense", "global_array", "is_attention_record", "is_dense_record",
           "place_params", "replicated", "shard_records"]

"""A model call on a mesh: the sharded ``apply_fn`` the samplers run, input placement, host gathering.

:func:`sharded_apply_fn` wraps any ``apply_fn(params, x, t, **cond)`` (the plain model call, the
segment-switching one of a mixed-precision plan, ...): while it is traced it pins the batch rows on
``data`` and the latent's leading token axis on ``seq`` (``with_sharding_constraint``), installs the
sequence-parallel attention (:func:`vidq_jax.sharding.attention.activate`) and wraps the quantized
records (:func:`vidq_jax.sharding.records.shard_records`); everything else (per-token Dense layers,
norms, the sampler's update rule) is split by the partitioner along those pins. The samplers' jitted
loop is unchanged: it sees one more ``apply_fn``, cached on its identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vidq_jax.sharding.attention import Layout, activate
from vidq_jax.sharding.mesh import DATA, SEQ, MeshError, as_mesh, axis, axis_size, divisors
from vidq_jax.sharding.records import PLACEMENTS, global_array, place_params, replicated, shard_records


def check_rows(mesh: Mesh, rows: int, what: str = "") -> None:
    """``MeshError`` unless axis ``data`` divides the ``rows`` of the model batch."""
    d = axis_size(mesh, DATA)
    if rows % d:
        raise MeshError(f"mesh data={d} does not divide the {rows} rows of the model batch{what}; choose data in "
                        f"{divisors(rows)}")


def _patch(model: Any, ndim: int) -> tuple[int, ...] | None:
    p = getattr(getattr(model, "config", None), "patch_size", None)
    if p is None:
        return None
    p = tuple(p) if isinstance(p, (tuple, list)) else (int(p),) * (ndim - 2)
    return p if len(p) == ndim - 2 else None


def latent_spec(model: Any, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Rows on ``data``; the latent's leading axis (image rows, video frames) on ``seq`` when its patch
    count divides over ``seq`` — then the tokens (row-major / frame-major) come out of the patch
    embedding as contiguous blocks, the layout the attention expects. Otherwise the tokens are left to
    the partitioner (the first attention moves them)."""
    entries: list[str | None] = [axis(mesh, DATA) if shape[0] % axis_size(mesh, DATA) == 0 else None]
    entries += [None] * (len(shape) - 1)
    patch = _patch(model, len(shape))
    s = axis_size(mesh, SEQ)
    if s > 1 and patch is not None and shape[1] % patch[0] == 0 and (shape[1] // patch[0]) % s == 0:
        entries[1] = SEQ
    return P(*entries)


def _constrain(x: Any, mesh: Mesh, spec: P) -> Any:
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _rows_spec(mesh: Mesh, rows: int) -> Callable[[Any], Any]:
    dax = axis(mesh, DATA)

    def pin(a: Any) -> Any:
        if isinstance(a, jax.Array) and a.ndim >= 1 and a.shape[0] == rows:
            return _constrain(a, mesh, P(dax))
        return a

    return pin


_APPLY_FNS: dict[tuple, tuple[Any, Callable]] = {}


def sharded_apply_fn(model: Any, apply_fn: Callable, mesh: Mesh, *, strategy: str = "ulysses",
                     placement: str = "replicate") -> Callable:
    """``apply_fn`` run on ``mesh`` (module docstring) for params stored as ``placement``
    (:func:`~vidq_jax.sharding.records.place_params`); the same function object for the same
    ``(model, apply_fn, mesh, strategy, placement)``, so the samplers' compiled loop is reused."""
    Layout(mesh, None, strategy)  # validates the strategy
    if placement not in PLACEMENTS:
        raise MeshError(f"param placement {placement!r} unknown; choose one of {PLACEMENTS}")
    key = (id(model), id(apply_fn), mesh, strategy, placement)
    entry = _APPLY_FNS.get(key)
    if entry is not None and entry[0][0] is model and entry[0][1] is apply_fn:
        return entry[1]

    def fn(params, x, t, **cond):
        rows = int(x.shape[0])
        check_rows(mesh, rows)
        layout = Layout(mesh, rows, strategy)
        pin = _rows_spec(mesh, rows)
        x = _constrain(x, mesh, latent_spec(model, x.shape, mesh))
        t, cond = pin(t), jax.tree_util.tree_map(pin, cond)
        with activate(layout):
            out = apply_fn(shard_records(params, layout, placement), x, t, **cond)
        return _constrain(out, mesh, latent_spec(model, out.shape, mesh))

    _APPLY_FNS[key] = ((model, apply_fn), fn)
    return fn


def place(tree: Any, mesh: Mesh, rows: int | None = None) -> Any:
    """Arrays of ``tree`` on ``mesh``: those with ``rows`` leading rows split over ``data`` (when they
    divide), the rest replicated. ``None`` leaves and non-array leaves are kept."""
    dax = axis(mesh, DATA)
    split = NamedSharding(mesh, P(dax))
    rep = replicated(mesh)

    def put(a: Any) -> Any:
        if not isinstance(a, (jax.Array, np.ndarray, np.generic)):
            return a
        on_rows = rows is not None and np.ndim(a) >= 1 and np.shape(a)[0] == rows and rows % axis_size(mesh, DATA) == 0
        return global_array(a, split if on_rows else rep)

    return jax.tree_util.tree_map(put, tree)


def prepare_sampling(model: Any, apply_fn: Callable, params: Any, noise: Any, cond: Mapping[str, Any],
                     uncond: Mapping[str, Any] | None, *, mesh: Any, guided: bool, strategy: str = "ulysses",
                     placement: str = "replicate") -> tuple[Callable, Any, Any, dict, dict | None]:
    """``(apply_fn, params, noise, cond, uncond)`` of a sampling run on ``mesh`` (a mesh, a device
    count, ``"data=2,seq=4"``): the sharded ``apply_fn``, params placed (:func:`place_params`), noise
    and conditions placed with their prompt rows on ``data``. ``guided``: the model batch holds the
    CFG pair (``2 × prompts`` rows). Errors (:class:`MeshError`) before any tracing."""
    b = int(np.shape(noise)[0])
    rows = 2 * b if guided else b
    mesh = as_mesh(mesh, rows=rows)
    check_rows(mesh, rows, f" ({b} prompt(s){' × 2 for CFG' if guided else ''})")
    fn = sharded_apply_fn(model, apply_fn, mesh, strategy=strategy, placement=placement)
    cond = place(dict(cond), mesh, b)
    uncond = None if uncond is None else place(dict(uncond), mesh, b)
    return fn, place_params(params, mesh, placement), place(noise, mesh, b), cond, uncond


def to_host(tree: Any) -> Any:
    """Arrays of ``tree`` as numpy on every process: a replicated array from its local copy, a
    sharded one gathered (``multihost_utils.process_allgather`` when it spans processes)."""

    def get(a: Any) -> Any:
        if not isinstance(a, jax.Array):
            return a
        if a.is_fully_addressable:
            return np.asarray(a)
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(get, tree)


def is_writer() -> bool:
    """Whether this process writes files (process 0 of a multi-process run; always true in one process)."""
    return jax.process_index() == 0


__all__ = ["check_rows", "is_writer", "latent_spec", "place", "prepare_sampling", "sharded_apply_fn", "to_host"]

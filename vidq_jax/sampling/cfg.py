"""Classifier-free guidance plumbing: the ``2B`` cond/uncond input batch, the split of params /
conditions into traced and static parts, and the guided model call made inside the sampling loop
(conventions in :mod:`vidq_jax.sampling`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ApplyFn", "Cond", "ModelSpec", "StaticSpec", "combine_cfg_inputs", "guided_output", "is_array",
           "split_static"]

ApplyFn = Callable[..., jax.Array]
"""``apply_fn(params, x, timestep, **cond) -> out`` (channels-last, prediction in ``[..., :C]``)."""

Cond = Mapping[str, Any]
"""Keyword inputs of the model (``y``, ``mask``, extras)."""


def is_array(x: Any) -> bool:
    """True for traced / concrete array leaves (jax or numpy); other leaves are static."""
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def combine_cfg_inputs(cond: Cond, uncond: Cond) -> dict[str, Any]:
    """Merge conditional and unconditional keyword inputs into one ``2B`` batch (cond rows first).

    Arrays with a batch axis are concatenated on axis 0; a key absent from ``uncond`` reuses the
    conditional value; ``None`` stays ``None``; non-array / 0-d leaves are shared (taken from
    ``cond``). Nested dicts are merged recursively.
    """
    extra = set(uncond) - set(cond)
    if extra:
        raise ValueError(f"uncond has keys that cond lacks: {sorted(extra)}")
    merged: dict[str, Any] = {}
    for k, c in cond.items():
        u = uncond.get(k, c)
        if isinstance(c, Mapping):
            if not isinstance(u, Mapping):
                raise ValueError(f"cond[{k!r}] is a dict but uncond[{k!r}] is not")
            merged[k] = combine_cfg_inputs(c, u)
        elif c is None or u is None:
            if c is not None or u is not None:
                raise ValueError(f"cond[{k!r}] and uncond[{k!r}] must both be None or both be set")
            merged[k] = None
        elif is_array(c) and np.ndim(c) >= 1:
            if not (is_array(u) and np.ndim(u) >= 1):
                raise ValueError(f"cond[{k!r}] is a batched array but uncond[{k!r}] is not")
            if np.shape(c)[1:] != np.shape(u)[1:]:
                raise ValueError(f"cond[{k!r}] {np.shape(c)} and uncond[{k!r}] {np.shape(u)} differ beyond axis 0")
            merged[k] = jnp.concatenate([jnp.asarray(c), jnp.asarray(u)], axis=0)
        else:
            if not is_array(c) and not is_array(u) and c != u:
                raise ValueError(f"shared input {k!r} differs between cond ({c!r}) and uncond ({u!r})")
            merged[k] = c
    return merged


@dataclasses.dataclass(frozen=True)
class StaticSpec:
    """Hashable description of a pytree's structure and its non-array leaves."""

    treedef: Any
    static: tuple[tuple[int, Any], ...]

    def join(self, dynamic: list[Any]) -> Any:
        leaves = list(dynamic)
        for i, v in self.static:
            leaves[i] = v
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def split_static(tree: Any) -> tuple[list[Any], StaticSpec]:
    """Array leaves -> traced list (``None`` at static slots); other leaves -> static spec."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dynamic = [leaf if is_array(leaf) else None for leaf in leaves]
    static = tuple((i, leaf) for i, leaf in enumerate(leaves) if not is_array(leaf))
    spec = StaticSpec(treedef, static)
    try:
        hash(spec)
    except TypeError as err:
        raise TypeError(f"non-array leaves of params / cond must be hashable: {err}") from None
    return dynamic, spec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything static about how the model is called inside a jitted loop."""

    apply_fn: Callable[..., Any]
    params_spec: StaticSpec
    cond_spec: StaticSpec
    use_cfg: bool
    cfg_channels: int | None  # guided leading channels (None = all C prediction channels)
    step_kwarg: str | None


def guided_output(
    spec: ModelSpec,
    params: Any,
    cond: Any,
    guidance_scale: jax.Array,
    x: jax.Array,
    timestep: jax.Array,
    step: jax.Array,
) -> jax.Array:
    """One (guided) model evaluation; returns ``(B, ..., C_out)`` in ``x.dtype``.

    With guidance: ``[x; x]`` with the merged ``2B`` conditions, then for the first ``k`` channels
    ``u + s * (c - u)`` and the remaining channels from the conditional half.
    """
    b = x.shape[0]
    kwargs = dict(cond)
    if spec.step_kwarg is not None:
        kwargs[spec.step_kwarg] = step
    if spec.use_cfg:
        x_in = jnp.concatenate([x, x], axis=0)
        t_in = jnp.concatenate([timestep, timestep], axis=0)
    else:
        x_in, t_in = x, timestep
    out = spec.apply_fn(params, x_in, t_in, **kwargs)
    chex.assert_rank(out, x.ndim)
    chex.assert_equal_shape_prefix([out, x_in], x.ndim - 1)
    out = out.astype(x.dtype)
    if not spec.use_cfg:
        return out
    c, u = out[:b], out[b:]
    k = x.shape[-1] if spec.cfg_channels is None else spec.cfg_channels
    guided = u[..., :k] + guidance_scale * (c[..., :k] - u[..., :k])
    return jnp.concatenate([guided, c[..., k:]], axis=-1)

"""Architecture-independent conversion machinery: PyTorch state dict ↔ Flax params tree.

The Flax modules are named after the original PyTorch modules, so one rule maps every parameter:

* path: components joined with ``.``, a trailing ``_<n>`` becomes ``.<n>`` (``blocks_3`` →
  ``blocks.3``, ``mlp_0`` → ``mlp.0``); the leaf ``kernel`` becomes ``weight``;
* value: a Dense kernel ``(in, out)`` is the transposed torch Linear weight ``(out, in)``; a Conv
  kernel ``(*k, in, out)`` is the torch Conv weight ``(out, in, *k)`` with axes moved; everything else
  is copied.

The expected torch shapes are derived from ``jax.eval_shape(model.init, ...)``, so validation and
conversion can never disagree with the model definition.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from conversion.errors import ConversionError
from conversion.io import StateDict

FlaxPath = tuple[str, ...]

_INDEX = re.compile(r"^(.*)_(\d+)$")


def flax_path_to_torch_key(path: FlaxPath) -> str:
    """``("blocks_0", "attn", "qkv", "kernel")`` → ``"blocks.0.attn.qkv.weight"``."""
    parts = [_INDEX.sub(r"\1.\2", p) for p in path[:-1]]
    leaf = "weight" if path[-1] == "kernel" else path[-1]
    return ".".join(parts + [leaf])


def torch_shape(path: FlaxPath, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape the torch tensor of a Flax leaf has."""
    if path[-1] != "kernel":
        return tuple(flax_shape)
    if len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    # conv: flax (*k, in, out) <- torch (out, in, *k)
    return (flax_shape[-1], flax_shape[-2], *flax_shape[:-2])


def torch_to_flax_value(path: FlaxPath, value: np.ndarray) -> np.ndarray:
    """Inverse of :func:`torch_shape` on values (numpy views; nothing is copied)."""
    if path[-1] != "kernel":
        return value
    if value.ndim == 2:
        return value.T
    nk = value.ndim - 2
    return np.transpose(value, (*range(2, 2 + nk), 1, 0))


def param_shapes(model: nn.Module, inputs: dict[str, Any]) -> dict[FlaxPath, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the model's params, computed abstractly (no memory)."""
    tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))["params"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in kp): tuple(v.shape) for kp, v in flat}


def expected_state_shapes(shapes: dict[FlaxPath, tuple[int, ...]]) -> dict[str, tuple[FlaxPath, tuple[int, ...]]]:
    """``{torch_key: (flax_path, torch_shape)}`` for every param of the model."""
    return {flax_path_to_torch_key(p): (p, torch_shape(p, s)) for p, s in shapes.items()}


def count_blocks(state: StateDict, prefix: str) -> int:
    """Number of ``<prefix>.<i>.…`` blocks in a state dict (highest index + 1; 0 if none)."""
    idx = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def validate_state_dict(
    state: StateDict,
    expected: dict[str, tuple[int, ...]],
    *,
    ignorable: Iterable[str] = (),
    source: str = "checkpoint",
    hint: str = "",
) -> None:
    """Raise one :class:`ConversionError` listing every missing, unexpected and mis-shaped key."""
    ignore = [re.compile(p) for p in ignorable]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not any(r.fullmatch(k) for r in ignore)]
    mismatched = [
        (k, tuple(state[k].shape), tuple(shape))
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    if missing or unexpected or mismatched:
        msg = f"{source} does not match the model"
        if hint:
            msg += f" ({hint})"
        raise ConversionError(msg, missing=missing, unexpected=unexpected, mismatched=mismatched)


def state_to_params(
    state: StateDict,
    shapes: dict[FlaxPath, tuple[int, ...]],
    *,
    ignorable: Iterable[str] = (),
    source: str = "checkpoint",
    hint: str = "",
    fill: dict[str, Callable[[tuple[int, ...]], np.ndarray]] | None = None,
) -> dict:
    """Validate ``state`` (original key naming) against the model and build the nested params dict.

    ``fill`` supplies values for torch keys a format legitimately lacks (e.g. the null caption of
    a diffusers folder). Leaves are numpy arrays (views of ``state`` where possible).
    """
    table = expected_state_shapes(shapes)
    state = dict(state)
    for key, make in (fill or {}).items():
        if key not in state and key in table:
            state[key] = make(table[key][1])
    validate_state_dict(state, {k: s for k, (_, s) in table.items()}, ignorable=ignorable, source=source, hint=hint)
    params: dict = {}
    for key, (path, _) in table.items():
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = torch_to_flax_value(path, state[key])
    return params


def to_jax(params: dict, dtype=None) -> dict:
    """numpy params → jax arrays (optionally cast, e.g. to bf16)."""

    def conv(a):
        a = np.ascontiguousarray(a)
        return jnp.asarray(a, dtype=dtype) if dtype is not None else jnp.asarray(a)

    return jax.tree_util.tree_map(conv, params)


def shapes_of(params: dict) -> dict[FlaxPath, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {tuple(k.key for k in kp): tuple(np.shape(v)) for kp, v in flat}

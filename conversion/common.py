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

import math
import os
import re
import sys
import warnings
from fractions import Fraction
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from conversion.errors import ConversionError, ConversionWarning
from conversion.io import StateDict

FlaxPath = tuple[str, ...]

_INDEX = re.compile(r"^(.*)_(\d+)$")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


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


# ------------------------------------------------------------------------------------------------
# What the shapes cannot tell: release values, stored sin-cos tables, loud assumptions
# ------------------------------------------------------------------------------------------------

# Every released XL model of the families here (PixArt-α/Σ, Open-Sora 1.0/1.2) is 1152 wide with 16
# heads of 72; the head count of any other width is not in the weights (the fused qkv hides it).
XL_HIDDEN = 1152
XL_NUM_HEADS = 16


def guess_num_heads(hidden: int) -> int:
    """Head count assumed for a width the releases do not have (a guess: the converters warn that it
    is one): head_dim 72 as the XL models, else the most heads (<= 16) of at least 16 channels."""
    if hidden % 72 == 0:
        return hidden // 72
    return max([d for d in range(1, 17) if hidden % d == 0 and hidden // d >= 16] or [1])


def snap_fraction(x: float, dtype: np.dtype) -> float:
    """Snap a value read back from a stored table to a nearby simple fraction (2/3, 0.5, ...);
    half-precision tables only determine it to ~1e-2."""
    tol = 1e-4 if np.dtype(dtype).itemsize >= 4 else 1e-2
    f = Fraction(x).limit_denominator(64)
    return float(f) if abs(float(f) - x) <= tol * abs(x) else float(x)


def sincos_position(table: np.ndarray, row: int, sin_channel: int, omega: float) -> float | None:
    """Position encoded in ``table[row]`` of a MAE sin-cos table, read from a low-frequency sin channel
    (invertible while ``position * omega < pi / 2``); ``None`` when the value cannot be one."""
    v = float(np.asarray(table[row, sin_channel], np.float64))
    if not -1.0 < v < 1.0:
        return None
    p = math.asin(v) / omega
    return p if p > 0 else None


def sincos_2d_grid(table: np.ndarray) -> tuple[int, int] | None:
    """Token grid ``(rows, cols)`` of a stored row-major 2-D sin-cos table ``(rows*cols, D)``: the
    first ``D/2`` channels encode the column, the last ``D/2`` the row, so the row coordinate first
    changes at index ``cols``. ``None`` when the table is not one (e.g. zeros)."""
    n, d = table.shape
    if n < 1 or d % 4:
        return None
    t = np.asarray(table, np.float64)
    half, quarter = d // 2, d // 4
    origin = np.concatenate([np.zeros(quarter), np.ones(quarter)])
    tol = 1e-2 if np.dtype(table.dtype).itemsize < 4 else 1e-5
    if np.abs(t[0, :half] - origin).max() > tol or np.abs(t[0, half:] - origin).max() > tol:
        return None  # position (0, 0) must read sin 0 / cos 1 everywhere
    moved = np.nonzero(np.abs(t[:, half : half + quarter]).max(axis=1) > tol)[0]
    cols = int(moved[0]) if moved.size else n
    if cols < 1 or n % cols:
        return None
    return n // cols, cols


def assumed_note(source: str, assumed: dict[str, Any], why: str = "") -> list[ConversionWarning]:
    """The warning (a one-item list; empty when nothing was assumed) naming every value the checkpoint
    does not determine and the converter assumed, and how to pass the right ones."""
    if not assumed:
        return []
    names = ", ".join(assumed)
    values = ", ".join(f"{k}={v!r}" for k, v in assumed.items())
    example = ", ".join(f'"{k}": ...' for k in assumed)
    message = (
        f"{source}: the checkpoint does not determine {names}{f' ({why})' if why else ''}; assumed {values}. "
        f"If the model was built otherwise its outputs are wrong: pass the values with config={{{example}}} "
        f"(vidq convert --config '{{{example}}}')"
    )
    return [ConversionWarning(message, assumed)]


def emit_notes(notes: Iterable[Warning]) -> None:
    """Issue the converters' collected warnings (after a conversion succeeded: a checkpoint that does
    not match at all gets its ConversionError alone)."""
    frame, level = sys._getframe(), 1  # attribute the warning to the first caller outside this package
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    for w in notes:
        warnings.warn(w, stacklevel=level)


def deliver_notes(pending: list[Warning], notes: list[Warning] | None) -> None:
    """A config resolver's warnings: into the caller's ``notes`` (a converter emits them once the
    checkpoint validated), or issued now (``notes=None``: the resolver was called on its own)."""
    if notes is None:
        emit_notes(pending)
    else:
        notes += pending

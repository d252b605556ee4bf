"""The attention seam: every attention of every model calls :func:`attend`.

Like the ``Dense`` seam (a quantized record in the params runs the quantized path), attention has two
ways to change its implementation without touching a model:

* **per layer** — an attention module whose params hold a record under :data:`RECORD_KEY` (anything
  with ``attend(q, k, v, key_mask, *, kind)``, e.g. a quantized-attention record written by the
  quantization recipes) runs that record;
* **per kind** — a backend installs the implementation of a kind (:func:`register`): ``"self"``
  (attention within each frame / image), ``"cross"`` (to the caption tokens) or ``"temporal"``
  (across the frames of each position, frame-major tokens). The quantization backends
  (:mod:`vidq_jax.quant.backends`) install the Pallas kernels this way; a model used on its own runs
  the reference implementations below.

Layouts: ``"self"``/``"cross"``: ``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``, ``key_mask (B, Nk)`` or None;
``"temporal"``: ``q, k, v (B, T, S, H, D)`` (no mask). Output in ``q``'s layout and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
KINDS: tuple[str, ...] = ("self", "cross", "temporal")
RECORD_KEY = "attention"  # params leaf of an attention module that selects a per-layer implementation

_IMPLS: dict[str, Callable[..., Array]] = {}


def register(kind: str, fn: Callable[..., Array] | None) -> None:
    """Install ``fn(q, k, v, key_mask=None)`` as the implementation of ``kind`` (``None`` restores the
    reference)."""
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}")
    if fn is None:
        _IMPLS.pop(kind, None)
    else:
        _IMPLS[kind] = fn


def implementation(kind: str) -> Callable[..., Array]:
    """The implementation :func:`attend` uses for ``kind`` when no per-layer record is present."""
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {KINDS}")
    if kind in _IMPLS:
        return _IMPLS[kind]
    return reference_frame_attention if kind == "temporal" else reference_attention


def attend(q: Array, k: Array, v: Array, key_mask: Array | None = None, *, kind: str, record: Any = None) -> Array:
    """Attention of ``kind`` (see the module docstring), through a per-layer ``record`` if given."""
    if record is not None:
        return record.attend(q, k, v, key_mask, kind=kind)
    if kind == "temporal":
        if key_mask is not None:
            raise ValueError("temporal attention takes no key mask")
        return implementation(kind)(q, k, v)
    return implementation(kind)(q, k, v, key_mask)


def reference_attention(q: Array, k: Array, v: Array, key_mask: Array | None = None) -> Array:
    """Multi-head softmax attention; ``q (B, Nq, H, D)``, ``k, v (B, Nk, H, D)``; ``key_mask (B, Nk)``.

    float32 inputs: explicit logits and softmax in float32 (as the non-flash paths of the originals,
    bit-close parity). Half-precision inputs (the GPU compute path): ``jax.nn.dot_product_attention``,
    cuDNN flash attention on a GPU where it supports the shape, XLA's fused attention otherwise (no
    ``(B, H, Nq, Nk)`` logits in memory). Masked keys get exactly zero weight as long as a row has a
    valid key.
    """
    if q.dtype in (jnp.bfloat16, jnp.float16):
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if jax.default_backend() == "gpu":
            try:  # cuDNN flash attention; shapes it does not support fall through to XLA's
                return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
            except Exception:  # noqa: BLE001 - raised at trace time for unsupported configurations
                pass
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    dtype = q.dtype
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.float32(-1e30))
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def reference_frame_attention(q: Array, k: Array, v: Array, key_mask: Array | None = None) -> Array:
    """Attention across frames in the tokens' own layout: ``q, k, v (B, T, S, H, D)``, each of the
    ``S`` positions attends over its ``T`` frames (float32 logits and softmax, weights cast to the input
    dtype before the second product, as the originals' non-flash attention)."""
    if not (q.shape == k.shape == v.shape and q.ndim == 5):
        raise ValueError(f"q, k, v must share one (B, T, S, H, D) shape; got {q.shape}, {k.shape}, {v.shape}")
    logits = jnp.einsum("btshd,bushd->bshtu", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * (1.0 / math.sqrt(q.shape[-1])), axis=-1).astype(q.dtype)
    return jnp.einsum("bshtu,bushd->btshd", weights, v)


__all__ = [
    "KINDS",
    "RECORD_KEY",
    "attend",
    "implementation",
    "reference_attention",
    "reference_frame_attention",
    "register",
]

"""Sequence-parallel attention behind the models' attention seam (:mod:`models.attention`).

The residual stream of a model call on a mesh is ``(B, N, C)`` with the rows ``B`` on axis ``data`` and
the tokens ``N`` (frame-major ``T·S`` for video) cut into contiguous blocks on axis ``seq``. Everything
per token (Dense, norms, MLP) is local in that layout; the attention of each kind is a ``shard_map``
that runs the kind's own implementation (reference, Pallas kernel, or a per-layer record) on every shard:

* ``"self"`` (within a frame / image), ``q (B·T, S, H, D)``:

  - frames local — a video whose ``T`` frames divide over ``seq`` holds whole frames on every device:
    the attention needs no communication at all;
  - **Ulysses** (default) — one ``all_to_all`` trades the token blocks for head blocks (``H / seq``
    heads with all ``N`` tokens on every device), the kind's implementation runs per frame on those
    heads, a second ``all_to_all`` trades back (``seq`` must divide the heads);
  - **ring** (``strategy="ring"``) — the key/value blocks travel around the ``seq`` ring
    (``ppermute``) and an online softmax in float32 folds them in: no head constraint, but its own
    blockwise einsum instead of the kind's implementation.

* ``"temporal"`` (across frames), ``q (B, T, S, H, D)``: Ulysses over the heads on the same flat token
  layout (any ``T``), or, where ``seq`` does not divide the heads or with ``strategy="ring"``, the
  positions ``S`` on ``seq`` (every position attends over its own frames: local; the partitioner moves
  the tokens there).
* ``"cross"`` (to the caption): queries stay where they are, the caption keys/values are replicated
  over ``seq``: local.

Token counts that do not divide over ``seq`` are padded to the next multiple inside these functions
(Ulysses drops the padding before the kind's implementation runs; ring masks padded keys; queries are
independent), so any ``N`` works. The batch rows must divide over ``data`` (checked where the model
call starts, :mod:`vidq_jax.sharding.apply`).

:func:`activate` installs these implementations for every kind (wrapping whatever implementation is
installed, e.g. the Pallas frame attention of :mod:`vidq_jax.quant.backends`) while a model is traced;
:class:`ShardedAttentionRecord` does the same for a per-layer attention record. Models never import
this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from models import attention as seam
from vidq_jax.sharding.mesh import DATA, SEQ, MeshError, axis, axis_size, divisors

STRATEGIES: tuple[str, ...] = ("ulysses", "ring")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a model call is laid out on ``mesh``: ``rows`` = its batch rows (``x.shape[0]``; ``None`` when
    unknown, then every self-attention row counts as one frame) and the sequence ``strategy``."""

    mesh: Mesh
    rows: int | None = None
    strategy: str = "ulysses"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise MeshError(f"sequence-parallel strategy {self.strategy!r} unknown; choose one of {STRATEGIES}")

    @property
    def seq(self) -> int:
        return axis_size(self.mesh, SEQ)

    def data_axis(self, rows: int) -> str | None:
        """``"data"`` when ``rows`` divide over it (else the rows are replicated over ``data``)."""
        return axis(self.mesh, DATA) if rows % axis_size(self.mesh, DATA) == 0 else None

    def check_heads(self, heads: int) -> None:
        if heads % self.seq:
            raise MeshError(f"Ulysses attention splits the {heads} attention heads over seq={self.seq}: choose seq "
                            f"in {divisors(heads)} or the ring strategy (--seq-strategy ring)")


def _smap(layout: Layout, fn: Callable, in_specs: tuple, out_specs: Any) -> Callable:
    return jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _pad(x: jax.Array, ax: int, multiple: int) -> jax.Array:
    extra = (-x.shape[ax]) % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[ax] = (0, extra)
    return jnp.pad(x, widths)


def _a2a_heads(x: jax.Array) -> jax.Array:
    """Local ``(b, N/s, H, D)`` token block → ``(b, N, H/s, D)`` head block."""
    return jax.lax.all_to_all(x, SEQ, 2, 1, tiled=True)


def _a2a_tokens(x: jax.Array) -> jax.Array:
    """Inverse of :func:`_a2a_heads`."""
    return jax.lax.all_to_all(x, SEQ, 1, 2, tiled=True)


Base = Callable[..., jax.Array]  # base(q, k, v, key_mask, operand) -> out, per shard


# ------------------------------------------------------------------------------------------------ self
def self_attention(q, k, v, key_mask, *, layout: Layout, base: Base, operand: Any = ()) -> jax.Array:
    """``"self"`` attention ``q, k, v (B·T, S, H, D)`` on ``layout`` (see the module docstring)."""
    s = layout.seq
    bq, n, h, d = q.shape
    rows = layout.rows if layout.rows and bq % layout.rows == 0 else bq
    frames = bq // rows
    dax = layout.data_axis(rows)
    if s == 1:
        return _local(layout, base, operand, (q, k, v), key_mask, P(dax))
    if frames > 1 and frames % s == 0:  # whole frames on every device: no communication
        view = lambda a: a.reshape(rows, frames, *a.shape[1:])  # noqa: E731
        out = _local(layout, _per_frame(base), operand, tuple(map(view, (q, k, v))),
                     None if key_mask is None else view(key_mask), P(dax, SEQ))
        return out.reshape(q.shape)
    if layout.strategy == "ring":
        return _ring_self(layout, q, k, v, key_mask, dax)
    layout.check_heads(h)
    flat = lambda a: _pad(a.reshape(rows, frames * n, h, d), 1, s)  # noqa: E731

    def shard(q, k, v, m, op):
        q, k, v = (_a2a_heads(a)[:, : frames * n] for a in (q, k, v))  # (r, T·S, H/s, D): padding dropped
        grouped = lambda a: a.reshape(-1, n, *a.shape[2:])  # noqa: E731
        o = base(grouped(q), grouped(k), grouped(v), m, op)
        return _a2a_tokens(_pad(o.reshape(q.shape), 1, s))

    mask_spec = P(dax)  # (B·T, S) rows: whole frames with their row block on data, all tokens
    out = _smap(layout, shard, (P(dax, SEQ),) * 3 + (mask_spec, P()), P(dax, SEQ))(
        flat(q), flat(k), flat(v), key_mask, operand)
    return out[:, : frames * n].reshape(q.shape)


def _per_frame(base: Base) -> Base:
    """``base`` on ``(b, f, S, H, D)`` blocks of whole frames (``(b, f, S)`` mask) as ``(b·f, S, H, D)``."""

    def fn(q, k, v, m, op):
        flat = lambda a: None if a is None else a.reshape(-1, *a.shape[2:])  # noqa: E731
        return base(flat(q), flat(k), flat(v), flat(m), op).reshape(q.shape)

    return fn


def _local(layout: Layout, base: Base, operand: Any, qkv: tuple, key_mask, spec: P, kv_spec: P | None = None,
           mask_spec: P | None = None) -> jax.Array:
    """``base`` per shard with no communication: ``q`` (and ``k, v`` unless ``kv_spec``) on ``spec``."""
    kv_spec = spec if kv_spec is None else kv_spec
    mask_spec = kv_spec if mask_spec is None else mask_spec
    specs = (spec, kv_spec, kv_spec, mask_spec, P())
    return _smap(layout, base, specs, spec)(*qkv, key_mask, operand)


def _ring_self(layout: Layout, q, k, v, key_mask, dax) -> jax.Array:
    """Ring attention over the tokens of each row (padded keys masked)."""
    s = layout.seq
    bq, n = q.shape[:2]
    valid = jnp.ones((bq, n), bool) if key_mask is None else jnp.asarray(key_mask).astype(bool)
    qp, kp, vp, vm = (_pad(a, 1, s) for a in (q, k, v, valid))
    out = _smap(layout, lambda *a: ring_attention(*a, size=s), (P(dax, SEQ),) * 4, P(dax, SEQ))(qp, kp, vp, vm)
    return out[:, :n]


def ring_attention(q, k, v, valid, *, size: int, axis_name: str = SEQ) -> jax.Array:
    """Per-shard ring attention: local ``q, k, v (b, n, H, D)`` and key validity ``(b, n)``; the key/value
    blocks of the ``size`` devices of ``axis_name`` pass by (``ppermute``) and an online softmax in
    float32 folds each in. Output ``(b, n, H, D)`` in ``q.dtype``; rows need one valid key overall."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    b, n, h, _ = q.shape
    m = jnp.full((b, h, n), -jnp.inf, jnp.float32)
    den = jnp.zeros((b, h, n), jnp.float32)
    acc = jnp.zeros(q.shape, jnp.float32)
    perm = [(i, (i + 1) % size) for i in range(size)]
    for step in range(size):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        logits = jnp.where(valid[:, None, None, :], logits, jnp.float32(-1e30))
        m_new = jnp.maximum(m, logits.max(-1))
        p = jnp.exp(logits - m_new[..., None])
        corr = jnp.exp(m - m_new)
        den = den * corr + p.sum(-1)
        acc = acc * jnp.transpose(corr, (0, 2, 1))[..., None] + jnp.einsum(
            "bhqk,bkhd->bqhd", p, v.astype(jnp.float32), preferred_element_type=jnp.float32)
        m = m_new
        if step + 1 < size:
            k, v, valid = (jax.lax.ppermute(a, axis_name, perm) for a in (k, v, valid))
    return (acc / jnp.transpose(den, (0, 2, 1))[..., None]).astype(q.dtype)


# ------------------------------------------------------------------------------------------------ temporal
def temporal_attention(q, k, v, *, layout: Layout, base: Base, operand: Any = ()) -> jax.Array:
    """``"temporal"`` attention ``q, k, v (B, T, S, H, D)`` on ``layout`` (see the module docstring)."""
    s = layout.seq
    b, t, n, h, d = q.shape
    dax = layout.data_axis(b)
    if s == 1:
        return _local(layout, base, operand, (q, k, v), None, P(dax))
    if layout.strategy == "ulysses" and h % s == 0:
        flat = lambda a: _pad(a.reshape(b, t * n, h, d), 1, s)  # noqa: E731

        def shard(q, k, v, op):
            q, k, v = (_a2a_heads(a)[:, : t * n].reshape(a.shape[0], t, n, h // s, d) for a in (q, k, v))
            o = base(q, k, v, None, op)
            return _a2a_tokens(_pad(o.reshape(o.shape[0], t * n, h // s, d), 1, s))

        out = _smap(layout, shard, (P(dax, SEQ),) * 3 + (P(),), P(dax, SEQ))(flat(q), flat(k), flat(v), operand)
        return out[:, : t * n].reshape(q.shape)
    # positions on seq: every position attends over its own frames (padded positions are dropped)
    spec = P(dax, None, SEQ)
    out = _local(layout, base, operand, tuple(_pad(a, 2, s) for a in (q, k, v)), None, spec)
    return out[:, :, :n]


# ------------------------------------------------------------------------------------------------ cross
def cross_attention(q, k, v, key_mask, *, layout: Layout, base: Base, operand: Any = ()) -> jax.Array:
    """``"cross"`` attention: queries ``(B, N, H, D)`` stay on their token blocks, the caption keys and
    values ``(B, L, H, D)`` (and ``key_mask (B, L)``) are replicated over ``seq``: local."""
    s, n = layout.seq, q.shape[1]
    dax = layout.data_axis(q.shape[0])
    out = _local(layout, base, operand, (_pad(q, 1, s), k, v), key_mask, P(dax, SEQ), kv_spec=P(dax))
    return out[:, :n]


# ------------------------------------------------------------------------------------------------ dispatch
def sharded_attend(q, k, v, key_mask=None, *, kind: str, layout: Layout, base: Base, operand: Any = ()) -> jax.Array:
    """Attention of ``kind`` on ``layout``, running ``base(q, k, v, key_mask, operand)`` per shard."""
    if kind == "self":
        return self_attention(q, k, v, key_mask, layout=layout, base=base, operand=operand)
    if kind == "temporal":
        if key_mask is not None:
            raise ValueError("temporal attention takes no key mask")
        return temporal_attention(q, k, v, layout=layout, base=base, operand=operand)
    if kind == "cross":
        return cross_attention(q, k, v, key_mask, layout=layout, base=base, operand=operand)
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {seam.KINDS}")


def _kind_base(kind: str, impl: Callable) -> Base:
    if kind == "temporal":
        return lambda q, k, v, m, op: impl(q, k, v)
    return lambda q, k, v, m, op: impl(q, k, v, m)


def implementation(kind: str, layout: Layout, impl: Callable) -> Callable:
    """``fn(q, k, v, key_mask=None)`` of ``kind`` on ``layout`` running ``impl`` (the kind's unsharded
    implementation, :func:`models.attention.implementation`) per shard."""
    base = _kind_base(kind, impl)

    def fn(q, k, v, key_mask=None):
        return sharded_attend(q, k, v, key_mask, kind=kind, layout=layout, base=base)

    fn.layout = layout  # type: ignore[attr-defined]
    return fn


@struct.dataclass
class ShardedAttentionRecord:
    """A per-layer attention record (``params[...]["attention"]``) run per shard on ``layout``; wrapped
    around the record while a model call on a mesh is traced (:func:`vidq_jax.sharding.shard_records`)."""

    record: Any
    layout: Layout = struct.field(pytree_node=False)

    def attend(self, q, k, v, key_mask=None, *, kind: str):
        def base(q, k, v, m, rec):
            return rec.attend(q, k, v, m, kind=kind)

        return sharded_attend(q, k, v, key_mask, kind=kind, layout=self.layout, base=base, operand=self.record)


_STACK: list[tuple[Layout, dict[str, Callable]]] = []  # (layout, the implementations found before the first)


def _install(layout: Layout, originals: dict[str, Callable]) -> None:
    for kind, impl in originals.items():
        seam.register(kind, implementation(kind, layout, impl))


@contextlib.contextmanager
def activate(layout_or_mesh: Layout | Mesh, *, rows: int | None = None, strategy: str = "ulysses") -> Iterator[Layout]:
    """Within the block, every attention kind runs sequence-parallel on the mesh (the implementation
    installed before — reference or kernel — per shard); what is traced inside (a jitted model call,
    the calibration statistics pass) keeps it. Blocks nest (the innermost layout holds); on leaving, an
    implementation someone registered meanwhile is kept."""
    layout = layout_or_mesh if isinstance(layout_or_mesh, Layout) else Layout(layout_or_mesh, rows, strategy)
    originals = _STACK[0][1] if _STACK else {kind: seam.implementation(kind) for kind in seam.KINDS}
    _STACK.append((layout, originals))
    try:
        _install(layout, originals)
        yield layout
    finally:
        _STACK.pop()
        if _STACK:
            _install(_STACK[-1][0], originals)
        else:
            for kind, impl in originals.items():
                if getattr(seam.implementation(kind), "layout", None) is None:
                    continue  # registered by someone else inside the block: theirs stays
                reference = impl in (seam.reference_attention, seam.reference_frame_attention)
                seam.register(kind, None if reference else impl)


def active_layout() -> Layout | None:
    """The layout being traced (inside :func:`activate`), or ``None``."""
    return _STACK[-1][0] if _STACK else None


__all__ = ["STRATEGIES", "Layout", "ShardedAttentionRecord", "activate", "active_layout", "cross_attention",
           "implementation", "ring_attention", "self_attention", "sharded_attend", "temporal_attention"]

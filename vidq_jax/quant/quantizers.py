"""Uniform integer quantizers (pure, jittable functions).

Notation: ``b`` = bits (2..8), ``L = 2**b`` levels. All integer values are stored **signed** in int8,
inside ``[-L/2, L/2 - 1]`` (for ``b = 4`` this is ``[-8, 7]``, the int4 packing range).

Symmetric (``zero_point is None``)::

    qmax  = 2**(b-1) - 1
    scale = max|x| / qmax                       (over the reduction group, see granularity)
    q     = clip(round_half_even(x / scale), -qmax, qmax)
    x_hat = q * scale

``round_half_even`` matches ``torch.round`` and the CUDA/Pallas ``rn`` conversion used by the
activation-quantization kernels (``pallas_kernels.quantize``: ``scale = absmax/127``, clip ±127).

Asymmetric (min-max, range forced to contain 0; the "new" ViDiT-Q code's signed convention)::

    xmax  = max(0, max x),  xmin = min(0, min x)
    scale = (xmax - xmin) / (L - 1)
    zp    = round_half_even(xmin / scale) + L/2          (int32)
    q     = clip(round_half_even(x / scale) - zp, -L/2, L/2 - 1)
    x_hat = (q + zp) * scale

In exact arithmetic ``xmin`` and ``xmax`` land on the bottom and top codes, but when ``xmin/scale``
is a ``.5`` tie (e.g. an exactly symmetric range: ``xmin/scale = -(L-1)/2``) float noise can move
one of them by a code; :func:`quantize` therefore snaps the group minimum/maximum (when nonzero)
to the bottom/top code. With both ends of the data on the ends of the
grid, fake quant is idempotent (``fq(fq(x)) == fq(x)`` up to a scale ulp), and the clip guarantees
``|x - x_hat| <= scale/2`` for every ``x`` in ``[xmin, xmax]``.

Degenerate groups: a scale below the smallest normal float32 (all-zero or denormal rows/columns) is
replaced by ``1.0`` — those groups quantize to 0 and dequantize to exact zeros, never NaN/Inf
(same rule as ``pallas_kernels.ops.quantize.row_scale``). Inputs must be finite with ``|x| < 1e37``.

Granularity (the quantized axis is always the LAST one = the GEMM contraction axis ``K``):

========== ======================================== ==============================================
name       one (scale, zp) per                      canonical scale shape for ``x (..., K)``
========== ======================================== ==============================================
"tensor"   whole tensor                             ``()``
"channel"  row: output channel of a weight ``(N,K)`` ``x.shape[:-1]``  (``(N,)`` for weights)
"token"    row: token of an activation ``(M,K)``     ``x.shape[:-1]``  (same math as "channel")
"group"    ``group_size`` contiguous K entries      ``x.shape[:-1] + (K // group_size,)`` (Q-DiT)
========== ======================================== ==============================================

"token" (dynamic) is simply "channel" applied to activations at every call: nothing is stored.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Granularity = Literal["tensor", "channel", "token", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "token", "group")
MIN_BITS, MAX_BITS = 2, 8
_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32


class QTensor(NamedTuple):
    """Result of :func:`quantize`: ``values`` int8, ``scale`` float32, ``zero_point`` int32 or None."""

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array | None


def check_bits(bits: int, what: str = "bits") -> None:
    """Raise ``ValueError`` unless ``bits`` is an int in [2, 8]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what}={bits!r} unsupported: integer quantization supports {MIN_BITS}..{MAX_BITS} bits")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: bits, symmetric or not, granularity, group size.

    Validated at construction; :meth:`check_dim` validates against the contraction size ``K``.
    """

    bits: int
    symmetric: bool = True
    granularity: Granularity = "channel"
    group_size: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r} unknown; choose one of {GRANULARITIES}")
        if self.granularity == "group":
            if (
                self.group_size is None
                or isinstance(self.group_size, bool)
                or not isinstance(self.group_size, (int, np.integer))
                or self.group_size < 1
            ):
                raise ValueError(f"granularity='group' needs a positive integer group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size} given but granularity={self.granularity!r} is not 'group'")

    @property
    def qmax(self) -> int:
        """Largest stored integer, ``2**(b-1) - 1``."""
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        """Smallest stored integer: ``-qmax`` (symmetric, narrow range) or ``-2**(b-1)`` (asymmetric)."""
        return -self.qmax if self.symmetric else -(2 ** (self.bits - 1))

    def check_dim(self, k: int, where: str = "") -> None:
        """Raise ``ValueError`` if the group size does not divide the contraction size ``k``."""
        if self.granularity == "group" and k % self.group_size:
            loc = f" in {where}" if where else ""
            raise ValueError(f"group_size={self.group_size} does not divide C_in={k}{loc}")

    def num_groups(self, k: int) -> int:
        """Number of scale groups along K: ``K // group_size`` for "group", else 1."""
        return k // self.group_size if self.granularity == "group" else 1


# ------------------------------------------------------------------------------------------
# internal shape helpers
# ------------------------------------------------------------------------------------------


def _grouped_view(x: jax.Array, spec: QuantSpec) -> jax.Array:
    """``x (..., K)`` → ``(..., G, g)`` with ``G = K // g`` for "group", ``(..., 1, K)`` otherwise."""
    k = x.shape[-1]
    spec.check_dim(k)
    g = spec.group_size if spec.granularity == "group" else k
    return x.reshape(x.shape[:-1] + (k // g, g))


def _reduce_axes(xv: jax.Array, spec: QuantSpec) -> tuple[int, ...]:
    return tuple(range(xv.ndim)) if spec.granularity == "tensor" else (xv.ndim - 1,)


def _to_view(p: jax.Array, spec: QuantSpec) -> jax.Array:
    """Canonical scale/zp → broadcastable against the grouped view ``(..., G, g)``."""
    if spec.granularity == "tensor":
        return p
    if spec.granularity == "group":
        return p[..., None]
    return p[..., None, None]


def _from_view(p: jax.Array, spec: QuantSpec) -> jax.Array:
    """keepdims reduction result on the grouped view → canonical shape (see module table)."""
    if spec.granularity == "tensor":
        return p.reshape(())
    if spec.granularity == "group":
        return p[..., 0]
    return p[..., 0, 0]


# ------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------


def _qparams_view(xv: jax.Array, spec: QuantSpec):
    """Parameters on the grouped view (keepdims): ``(scale, zp | None, xmin, xmax, degenerate)``."""
    axes = _reduce_axes(xv, spec)
    if spec.symmetric:
        amax = jnp.max(jnp.abs(xv), axis=axes, keepdims=True)
        scale = amax / spec.qmax
        degenerate = scale < _TINY
        return jnp.where(degenerate, jnp.float32(1.0), scale), None, None, None, degenerate
    levels = 2**spec.bits
    xmax = jnp.maximum(jnp.max(xv, axis=axes, keepdims=True), 0.0)
    xmin = jnp.minimum(jnp.min(xv, axis=axes, keepdims=True), 0.0)
    # xmax/(L-1) - xmin/(L-1) rather than (xmax - xmin)/(L-1): no overflow for huge ranges.
    scale = xmax / (levels - 1) - xmin / (levels - 1)
    degenerate = scale < _TINY
    scale = jnp.where(degenerate, jnp.float32(1.0), scale)
    zp = (jnp.round(xmin / scale) + levels // 2).astype(jnp.int32)
    return scale, zp, xmin, xmax, degenerate


def compute_qparams(x: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array | None]:
    """Min-max (asymmetric) or absmax (symmetric) ``(scale f32, zero_point int32 | None)``.

    Shapes are canonical (see the module docstring). Formulas in the module docstring.
    """
    xv = _grouped_view(jnp.asarray(x).astype(jnp.float32), spec)
    scale, zp, *_ = _qparams_view(xv, spec)
    return _from_view(scale, spec), None if zp is None else _from_view(zp, spec)


def quantize_with_params(
    x: jax.Array, scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """Integer values (int8, same shape as ``x``) for given canonical ``scale``/``zero_point``.

    Used directly for static (calibrated) activation scales; :func:`quantize` computes them first.
    """
    x = jnp.asarray(x)
    xv = _grouped_view(x.astype(jnp.float32), spec)
    s = _to_view(jnp.asarray(scale, jnp.float32), spec)
    if spec.symmetric or zero_point is None:
        if not spec.symmetric:
            raise ValueError("asymmetric quantization needs a zero_point")
        q = jnp.round(xv / s)
    else:
        zp = _to_view(jnp.asarray(zero_point, jnp.int32), spec).astype(jnp.float32)
        q = jnp.round(xv / s) - zp
    q = jnp.clip(q, spec.qmin, spec.qmax).astype(jnp.int8)
    return q.reshape(x.shape)


def quantize(x: jax.Array, spec: QuantSpec) -> QTensor:
    """Quantize ``x (..., K)`` → ``QTensor(values int8, scale f32, zero_point int32 | None)``.

    Dynamic: parameters from ``x`` itself; in asymmetric groups the data minimum/maximum are snapped
    to the bottom/top code (see the module docstring).
    """
    x = jnp.asarray(x)
    xv = _grouped_view(x.astype(jnp.float32), spec)
    scale, zp, xmin, xmax, degenerate = _qparams_view(xv, spec)
    scale_c = _from_view(scale, spec)
    zp_c = None if zp is None else _from_view(zp, spec)
    q = _grouped_view(quantize_with_params(x, scale_c, zp_c, spec), spec)
    if not spec.symmetric:
        live = jnp.logical_not(degenerate)
        q = jnp.where((xv == xmax) & (xmax > 0) & live, jnp.int8(spec.qmax), q)
        q = jnp.where((xv == xmin) & (xmin < 0) & live, jnp.int8(spec.qmin), q)
    return QTensor(q.reshape(x.shape), scale_c, zp_c)


def dequantize(
    values: jax.Array,
    scale: jax.Array,
    zero_point: jax.Array | None,
    spec: QuantSpec,
    dtype=jnp.float32,
) -> jax.Array:
    """``x_hat = (q + zp) * scale`` (``zp = 0`` when symmetric) in ``dtype``; same shape as ``values``."""
    qv = _grouped_view(jnp.asarray(values).astype(jnp.float32), spec)
    if zero_point is not None:
        qv = qv + _to_view(jnp.asarray(zero_point, jnp.int32), spec).astype(jnp.float32)
    out = qv * _to_view(jnp.asarray(scale, jnp.float32), spec)
    return out.reshape(jnp.shape(values)).astype(dtype)


def fake_quant(x: jax.Array, spec: QuantSpec) -> jax.Array:
    """Quantize-dequantize ``x`` (result in ``x.dtype``); dynamic: parameters from ``x`` itself."""
    q = quantize(x, spec)
    return dequantize(q.values, q.scale, q.zero_point, spec, dtype=jnp.asarray(x).dtype)


def fake_quant_with_params(
    x: jax.Array, scale: jax.Array, zero_point: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """Quantize-dequantize with given (e.g. static, calibrated) parameters; result in ``x.dtype``."""
    q = quantize_with_params(x, scale, zero_point, spec)
    return dequantize(q, scale, zero_point, spec, dtype=jnp.asarray(x).dtype)


def fake_quant_per_token(x: jax.Array, bits: int = 8, symmetric: bool = True) -> jax.Array:
    """Dynamic per-token fake quant of an activation ``x (..., K)`` (ViDiT-Q: 8-bit symmetric)."""
    return fake_quant(x, QuantSpec(bits, symmetric, "token"))


def fake_quant_per_group(x: jax.Array, group_size: int, bits: int = 8, symmetric: bool = False) -> jax.Array:
    """Dynamic per-token, per-``group_size``-channel fake quant (Q-DiT: asymmetric, group 128)."""
    return fake_quant(x, QuantSpec(bits, symmetric, "group", group_size))


__all__ = [
    "GRANULARITIES",
    "Granularity",
    "QTensor",
    "QuantSpec",
    "check_bits",
    "compute_qparams",
    "dequantize",
    "fake_quant",
    "fake_quant_per_group",
    "fake_quant_per_token",
    "fake_quant_with_params",
    "quantize",
    "quantize_with_params",
    "rows_by_groups",
]


def rows_by_groups(p: jax.Array | None, rows: int | None = None, groups: int | None = None) -> jax.Array | None:
    """A scale / zero point in any canonical granularity (``()`` tensor, ``(rows,)`` channel/token,
    ``(rows, G)`` group) as a broadcastable ``(rows|1, G|1)`` array, or broadcast to ``(rows, groups)``
    when both are given (the per-group GEMM kernels' operand layout)."""
    if p is None:
        return None
    p = jnp.asarray(p)
    p = p.reshape(1, 1) if p.ndim == 0 else p[:, None] if p.ndim == 1 else p
    return p if rows is None or groups is None else jnp.broadcast_to(p, (rows, groups))

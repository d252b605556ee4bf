"""The quantized weight record (the Dense seam of DESIGN.md) and its backends.

Orientation and transform order (one place for this contract)::

    Flax Dense:     y = x · W + b,         W = kernel (K, N),   x (..., K)
    stored:         W_q ≈ ((W · diag(s))ᵀ) · R         as (N, K), K contiguous (row n = output n)
                    R = diag(h) · H_K / sqrt(K)        randomized Hadamard, h = hadamard_signs (K,)
                    s = smooth (K,)                    (SmoothQuant convention, see balance.py)
    run time:       x' = ((x / s) · R)                 smoothing first, then rotation
                    y  = Q_a(x') · Q_w(W')ᵀ + b        W' = (W·diag(s))ᵀ · R  (N, K)

Unquantized, ``x' W'ᵀ = (x/s) R Rᵀ diag(s) W = x W`` exactly (R orthogonal). The weight is
quantized ONCE, after smoothing and rotation (the released ViDiT-Q code quantizes twice, its issue
#17), and the rotation signs are stored in the record (its issue #22: regenerated at load time).

Backends (``LayerQuant.backend``, resolved by :func:`vidq_jax.quant.backends.resolve`; identical integer
values, floats equal up to rounding):

* ``auto`` (default) — ``pallas`` on a Hopper GPU, else ``xla``; resolved when the layer is traced, so
  one quantized checkpoint runs fast wherever it lands.

* ``simulate`` — fake quant: ``dequant(Q_a(x')) @ dequant(Q_w)ᵀ`` in float32 (HIGHEST precision).
* ``xla`` — integer GEMM: ``lax.dot_general(q_x int8, q_w int8, contract K of both,
  preferred_element_type=int32)`` per scale group ``g`` (one group unless a side is grouped), then
  the epilogue ``y[m,n] = Σ_g s_x[m,g] s_w[n,g] (acc + z_w·Σq_x + z_x·Σq_w + |g|·z_x·z_w)[g,m,n]``,
  all correction terms exact in int32.
* ``pallas`` — :func:`vidq_jax.quant.backends.pallas_dense`: the kernel package's ``w8a8_linear`` /
  ``w4a8_linear`` (fused quantize — with the smoothing, the online rotation and, for a Dense called with
  ``prenorm=``, the block's LayerNorm + adaLN modulate inside the quantizer's producer — + int8 GEMM +
  epilogue) for per-channel (or symmetric per-group packed int4) weights and dynamic symmetric
  per-token int8 activations; an asymmetric weight's zero-point term ``z_w·Σq_x`` is added in int32
  inside the GEMM epilogue from the code sums the quantizer kernel writes; anything else, or a missing
  kernel package, falls back to ``xla`` (logged once per reason).

Weight-only layers (``a_bits=None``) dequantize the weight and run a float matmul on any backend.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from models.layers import LN_EPS, activate, add_residual, prenorm_dtype, prenorm_groups, prenorm_input, split_columns
# the int4 storage layout and the e4m3 quantizer are the kernels' (one packer, one FP8 rule)
from pallas_kernels import FP8, pack_int4, quantize_fp8_weight_ref, quantize_per_token_ref, unpack_int4
from vidq_jax.quant import backends
from vidq_jax.quant.config import LayerQuant
from vidq_jax.quant.hadamard import hadamard_transform
from vidq_jax.quant.quantizers import (
    QTensor,
    QuantSpec,
    compute_qparams,
    dequantize,
    quantize,
    quantize_with_params,
    rows_by_groups,
)

_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class QuantizedWeight:
    """A quantized Dense kernel; drop-in replacement of the ``kernel`` leaf of ``models.layers.Dense``.

    Array fields (pytree leaves):

    * ``qvalue`` — int8 ``(N, K)``, or uint8 ``(N, K // 2)`` packed int4 when ``layer.packed``, or
      ``float8_e4m3fn`` ``(N, K)`` when ``layer.fp8``;
    * ``scale`` — float32 weight scale: ``()`` per tensor, ``(N,)`` per channel, ``(N, K//g)`` per group;
    * ``zero_point`` — int32, same shape as ``scale`` (``None`` for symmetric weights);
    * ``smooth`` — float32 ``(K,)``, ``x' = x / smooth`` (``None`` = no smoothing);
    * ``hadamard_signs`` — float32 ±1 ``(K,)`` of the randomized Hadamard ``R`` (``None`` = no rotation);
    * ``act_scale`` / ``act_zero_point`` — static per-tensor activation parameters (``a_static``).

    Static metadata: ``layer`` (:class:`LayerQuant`: bits, granularities, group size, activation mode,
    backend) and ``in_features`` ``K``.
    """

    qvalue: jax.Array
    scale: jax.Array
    zero_point: jax.Array | None = None
    smooth: jax.Array | None = None
    hadamard_signs: jax.Array | None = None
    act_scale: jax.Array | None = None
    act_zero_point: jax.Array | None = None
    layer: LayerQuant = struct.field(pytree_node=False, default_factory=LayerQuant)
    in_features: int = struct.field(pytree_node=False, default=0)

    # ------------------------------------------------------------------ metadata views
    @property
    def out_features(self) -> int:
        return self.qvalue.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the float kernel this record replaces, ``(K, N)``."""
        return (self.in_features, self.out_features)

    @property
    def w_bits(self) -> int:
        return self.layer.w_bits

    @property
    def a_bits(self) -> int | None:
        return self.layer.a_bits

    @property
    def backend(self) -> str:
        """The backend this record computes with here (``auto`` resolved, see the module docstring)."""
        return backends.resolve(self.layer.backend)

    def with_backend(self, backend: str) -> "QuantizedWeight":
        """Same record, other backend (validated)."""
        return self.replace(layer=self.layer.replace(backend=backend))

    # ------------------------------------------------------------------ weight views
    def int_weight(self) -> jax.Array:
        """Integer weight values, int8 ``(N, K)`` (unpacked); the e4m3 codes of an ``fp8`` layer."""
        if self.layer.fp8:
            return self.qvalue
        if self.layer.packed:
            return unpack_int4(self.qvalue.astype(jnp.uint8))
        return self.qvalue.astype(jnp.int8)

    def dequantize(self) -> jax.Array:
        """``W_hat`` float32 ``(N, K)`` in the balanced (smoothed + rotated) domain."""
        if self.layer.fp8:
            return self.qvalue.astype(jnp.float32) * self.scale.astype(jnp.float32)[:, None]
        return dequantize(self.int_weight(), self.scale, self.zero_point, self.layer.weight_spec())

    def effective_kernel(self) -> jax.Array:
        """The float kernel ``(K, N)`` this record computes with: undo rotation and smoothing."""
        w = self.dequantize()
        if self.hadamard_signs is not None:
            w = hadamard_transform(w, self.hadamard_signs, inverse=True)
        if self.smooth is not None:
            w = w / self.smooth.astype(jnp.float32)[None, :]
        return w.T

    # ------------------------------------------------------------------ activation side
    def balance(self, x2: jax.Array) -> jax.Array:
        """``x' = (x / s) · R`` on ``(M, K)`` float32 (identity parts skipped)."""
        if self.smooth is not None:
            x2 = x2 / self.smooth.astype(jnp.float32)
        if self.hadamard_signs is not None:
            x2 = hadamard_transform(x2, self.hadamard_signs)
        return x2

    def smooth_multiplier(self) -> jax.Array | None:
        """``1 / smooth`` (``(K,)``): the factor to fold into the producer of ``x`` — a preceding
        LayerNorm/modulation or ``pallas_kernels.fused_quantize_producer(smooth=...)``, which
        multiplies (ViDiT-Q's ``m``) where this record divides."""
        return None if self.smooth is None else 1.0 / self.smooth.astype(jnp.float32)

    def rotation_hook(self):
        """``x -> x · R`` as a hashable ``jax.tree_util.Partial`` (``None`` without rotation), e.g.
        the ``hook`` of ``pallas_kernels.fused_quantize_producer``."""
        if self.hadamard_signs is None:
            return None
        return jax.tree_util.Partial(hadamard_transform, signs=self.hadamard_signs)

    def quantize_activation(self, x2: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """``(q int8 (M, K), scale, zero_point)`` of the balanced activation (dynamic or static); an
        ``fp8`` layer: ``(q e4m3 (M, K), scale (M,), None)``, the kernels' per-token e4m3 rule."""
        spec = self.layer.act_spec()
        assert spec is not None
        if self.layer.fp8:
            q, s = quantize_per_token_ref(x2, dtype=FP8)
            return q, s[..., 0], None
        if self.layer.a_static:
            q = quantize_with_params(x2, self.act_scale, self.act_zero_point, spec)
            return q, self.act_scale, self.act_zero_point
        q = quantize(x2, spec)
        return q.values, q.scale, q.zero_point

    # ------------------------------------------------------------------ the seam
    def quantized_dense(self, x: jax.Array, bias: jax.Array | None = None, dtype: Any = None,
                        activation: str | None = None, splits: int = 1, residual: jax.Array | None = None,
                        gate: jax.Array | None = None, prenorm: tuple | None = None) -> jax.Array | tuple[jax.Array, ...]:
        """``y = act(x · W + b)`` for ``x (..., K)`` → ``(..., N)`` in ``dtype`` (default ``x.dtype``);
        ``activation`` names a ``models.layers.ACTIVATIONS`` entry (fused into the Pallas epilogue).
        ``splits > 1``: a tuple of ``splits`` column blocks ``(..., N / splits)`` (the Pallas kernels
        compute them as separate GEMMs on one quantized ``x``; other backends split one output).
        ``residual`` / ``gate``: ``residual + gate · y`` (``models.layers.add_residual``); the Pallas
        epilogue fuses it when ``residual`` is ``(..., N)`` and ``gate`` varies at most along the first
        axis (a DiT block's ``(B, 1, N)`` adaLN gate), the other backends apply it after the cast.
        ``prenorm=(shift, scale)``: the layer's input is ``models.layers.prenorm_input(x, prenorm)`` =
        ``modulate(layer_norm(x), shift, scale)``; the per-token Pallas linears fuse it into their quantizer
        (read ``x`` once: LayerNorm, modulate, smoothing, rotation, quantize), every other path computes it
        first with that helper (the numerics of a Dense that computes it)."""
        x = jnp.asarray(x)
        out_dtype = jnp.dtype(dtype) if dtype is not None else prenorm_dtype(x, prenorm)
        k = self.in_features
        if x.shape[-1] != k:
            raise ValueError(f"quantized Dense expects (..., {k}) input, got {x.shape}")
        if splits < 1 or self.out_features % splits:
            raise ValueError(f"{self.out_features} output features do not split into {splits} blocks")
        lead = x.shape[:-1]
        n = self.out_features
        fast = self.layer.a_bits is not None and self.backend == "pallas"
        if prenorm is not None and (not fast or backends.needs_group_gemm(self.layer)):
            x, prenorm = prenorm_input(x, prenorm), None  # (the group GEMM quantizes in XLA: no prologue)
        if fast and (y := pallas_output(self, x.reshape(-1, k), lead, bias, out_dtype, activation, splits,
                                        residual, gate, **kernel_prenorm(prenorm, x.shape))) is not None:
            return y
        xr = prenorm_input(x, prenorm).reshape(-1, k)
        x2 = self.balance(xr.astype(jnp.float32))
        if self.layer.a_bits is None:
            y = jnp.matmul(x2, self.dequantize().T, precision=_HIGHEST)
        elif self.backend == "simulate":
            y = self._simulate(x2)
        else:
            y = self._xla(x2)
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        y = split_columns(activate(activation, y).astype(out_dtype).reshape(lead + (n,)), splits)
        return add_residual(y, residual, gate)

    def _simulate(self, x2: jax.Array) -> jax.Array:
        q, s, z = self.quantize_activation(x2)
        if self.layer.fp8:
            x_hat = q.astype(jnp.float32) * s[:, None]
        else:
            x_hat = dequantize(q, s, z, self.layer.act_spec())
        return jnp.matmul(x_hat, self.dequantize().T, precision=_HIGHEST)

    def _xla(self, x2: jax.Array) -> jax.Array:
        q, s, z = self.quantize_activation(x2)
        if self.layer.fp8:  # XLA's own FP8 GEMM (cuBLASLt e4m3 on Hopper), float32 accumulation
            acc = jax.lax.dot_general(q, self.qvalue, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            return acc * s[:, None] * self.scale.astype(jnp.float32)[None, :]
        return integer_linear(
            q, s, z, self.layer.act_spec(), self.int_weight(), self.scale, self.zero_point, self.layer.weight_spec()
        )


def pallas_output(rec: QuantizedWeight, xr: jax.Array, lead: tuple[int, ...], bias: jax.Array | None, out_dtype,
                  activation: str | None, splits: int, residual: jax.Array | None, gate: jax.Array | None,
                  **extra) -> jax.Array | tuple[jax.Array, ...] | None:
    """The fused kernels' output (:func:`vidq_jax.quant.backends.pallas_dense` on the flat rows ``xr``, with
    ``extra`` epilogue operands, e.g. a TQE branch's ``rank1``) in the Dense seam's shapes ``lead + (N,)``
    (column blocks for ``splits > 1``), the gated residual fused when its shapes allow, else added after;
    ``None`` when the kernels do not take the record (-> xla)."""
    n = rec.out_features
    fused = {}
    if residual is not None or gate is not None:
        row_gate = None if gate is None else _row_gate(gate, lead, n)
        if (splits == 1 and (gate is None or row_gate is not None)
                and (residual is None or tuple(residual.shape) == lead + (n,))):
            fused = {"residual": None if residual is None else residual.reshape(-1, n), "gate": row_gate}
    yk = backends.pallas_dense(rec, xr, bias, out_dtype, activation, splits, **fused, **extra)
    if yk is None:
        return None
    if isinstance(yk, tuple):  # the kernels computed the column blocks separately
        return tuple(a.reshape(lead + (a.shape[-1],)) for a in yk)
    y = split_columns(yk.reshape(lead + (n,)), splits)
    return y if fused else add_residual(y, residual, gate)


def kernel_prenorm(prenorm: tuple | None, x_shape: tuple[int, ...]) -> dict:
    """``{"prenorm": (shift (G, K), scale (G, K), eps)}`` (float32 rows) — the kernels' form of a Dense's
    ``prenorm=(shift, scale[, eps])`` on ``x`` of ``x_shape`` (slab ``g`` of the flattened rows modulated by
    row ``g``, :func:`models.layers.prenorm_input`) — or ``{}`` without it."""
    if prenorm is None:
        return {}
    shift, scale, *eps = prenorm
    rows = (prenorm_groups(x_shape, shift, scale), x_shape[-1])
    return {"prenorm": (shift.reshape(rows).astype(jnp.float32), scale.reshape(rows).astype(jnp.float32),
                        *(eps or (LN_EPS,)))}


def _row_gate(gate: jax.Array, lead: tuple[int, ...], n: int) -> jax.Array | None:
    """A gate broadcastable to ``lead + (N,)`` that varies only along the first axis (and the last) as
    the kernels' ``(G, N)`` form (row ``g`` for the ``g``-th slab of the flattened rows); ``None`` if
    it varies along other axes (e.g. per-frame gates)."""
    g = jnp.asarray(gate)
    if not lead or g.ndim > len(lead) + 1:
        return None
    g = g.reshape((1,) * (len(lead) + 1 - g.ndim) + g.shape)
    if g.shape[-1] not in (1, n) or g.shape[0] not in (1, lead[0]) or any(d != 1 for d in g.shape[1:-1]):
        return None
    return jnp.broadcast_to(g.reshape(g.shape[0], g.shape[-1]), (g.shape[0], n))


# ------------------------------------------------------------------------------------------------
# integer GEMM (xla backend)
# ------------------------------------------------------------------------------------------------


def integer_accumulators(qx: jax.Array, qw: jax.Array, groups: int = 1) -> jax.Array:
    """``acc[g, m, n] = Σ_{k in group g} qx[m, k] · qw[n, k]`` exactly, int32 ``(G, M, N)``.

    ``qx (M, K)`` and ``qw (N, K)`` int8 (both K-contiguous, contracting dim 1 of both, the layout
    cuBLASLt/Pallas want); one batched ``lax.dot_general`` with ``preferred_element_type=int32``.
    """
    m, k = qx.shape
    n = qw.shape[0]
    a, b = qx.astype(jnp.int8), qw.astype(jnp.int8)
    if groups == 1:  # plain 2-D "TN" GEMM: what XLA maps to cuBLASLt int8 on GPU
        return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)[None]
    g = k // groups
    a = a.reshape(m, groups, g)
    b = b.reshape(n, groups, g)
    return jax.lax.dot_general(a, b, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)


def integer_linear(
    qx: jax.Array,
    sx: jax.Array,
    zx: jax.Array | None,
    a_spec: QuantSpec,
    qw: jax.Array,
    sw: jax.Array,
    zw: jax.Array | None,
    w_spec: QuantSpec,
) -> jax.Array:
    """``dequant(qx) · dequant(qw)ᵀ`` computed as an int8 GEMM + float32 epilogue, ``(M, N)``.

    With ``x_hat = (qx + zx) sx`` and ``w_hat = (qw + zw) sw`` per scale group ``g``::

        y[m,n] = Σ_g sx[m,g] sw[n,g] · (acc + zw[n,g]·Σ_k qx[m,k] + zx[m,g]·Σ_k qw[n,k] + |g| zx zw)

    where the bracket is computed exactly in int32.
    """
    m, k = qx.shape
    n = qw.shape[0]
    groups = max(a_spec.num_groups(k), w_spec.num_groups(k))
    gsize = k // groups
    acc = integer_accumulators(qx, qw, groups)  # (G, M, N) int32
    sx_b = rows_by_groups(jnp.asarray(sx, jnp.float32))
    sw_b = rows_by_groups(jnp.asarray(sw, jnp.float32))
    zx_b = rows_by_groups(zx)
    zw_b = rows_by_groups(zw)
    if zw_b is not None:
        rx = jnp.sum(qx.astype(jnp.int32).reshape(m, groups, gsize), axis=-1)  # (M, G)
        acc = acc + zw_b.astype(jnp.int32).T[:, None, :] * rx.T[:, :, None]
    if zx_b is not None:
        cw = jnp.sum(qw.astype(jnp.int32).reshape(n, groups, gsize), axis=-1)  # (N, G)
        acc = acc + zx_b.astype(jnp.int32).T[:, :, None] * cw.T[:, None, :]
        if zw_b is not None:
            acc = acc + gsize * zx_b.astype(jnp.int32).T[:, :, None] * zw_b.astype(jnp.int32).T[:, None, :]
    if groups == 1:
        return acc[0].astype(jnp.float32) * sx_b[:, :1] * sw_b[:, 0][None, :]
    sx_full = jnp.broadcast_to(sx_b, (m, groups))
    sw_full = jnp.broadcast_to(sw_b, (n, groups))
    return jnp.einsum("mg,ng,gmn->mn", sx_full, sw_full, acc.astype(jnp.float32), precision=_HIGHEST)


# ------------------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------------------


def balanced_weight(
    kernel: jax.Array, smooth: jax.Array | None = None, hadamard_signs: jax.Array | None = None
) -> jax.Array:
    """``W' = (kernel · diag(smooth))ᵀ · R`` float32 ``(N, K)`` — the float weight that gets quantized.

    Pairs with :meth:`QuantizedWeight.balance`: ``balance(x) · W'ᵀ = x · kernel`` up to rounding.
    """
    w = jnp.asarray(kernel).astype(jnp.float32)
    if smooth is not None:
        w = w * jnp.asarray(smooth, jnp.float32)[:, None]
    w = w.T
    if hadamard_signs is not None:
        w = hadamard_transform(w, hadamard_signs)
    return w


def quantize_weight(
    kernel: jax.Array,
    layer: LayerQuant,
    *,
    smooth: jax.Array | None = None,
    hadamard_signs: jax.Array | None = None,
    act_scale: jax.Array | None = None,
    act_zero_point: jax.Array | None = None,
    name: str = "",
) -> QuantizedWeight:
    """Quantize a Flax ``kernel (K, N)`` once, after smoothing and rotation → :class:`QuantizedWeight`.

    ``W' = (kernel · diag(smooth))ᵀ · R`` (``(N, K)``), then the weight quantizer of ``layer``;
    ``smooth``/``hadamard_signs`` are applied exactly as given (see
    :func:`vidq_jax.quant.balance.balance_for_layer` to derive them from ``layer``). ``act_scale``
    (and ``act_zero_point`` if asymmetric) are required when ``layer.a_static``. Errors name ``name``.
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError(f"layer {name or '?'}: kernel must be (K, N), got {kernel.shape}")
    k = kernel.shape[0]
    layer.check_in_features(k, name)
    for vec, what in ((smooth, "smooth"), (hadamard_signs, "hadamard_signs")):
        if vec is not None and jnp.shape(vec) != (k,):
            raise ValueError(f"layer {name or '?'}: {what} must have shape ({k},), got {jnp.shape(vec)}")
    if layer.a_static:
        if act_scale is None:
            raise ValueError(f"layer {name or '?'}: a_static=True needs a calibrated act_scale")
        if not layer.a_symmetric and act_zero_point is None:
            raise ValueError(f"layer {name or '?'}: asymmetric static activations need act_zero_point")
    smooth = None if smooth is None else jnp.asarray(smooth, jnp.float32)
    hadamard_signs = None if hadamard_signs is None else jnp.asarray(hadamard_signs, jnp.float32)
    if layer.fp8:  # e4m3 codes, one scale per output channel (the kernel package's rule)
        qt = QTensor(*quantize_fp8_weight_ref(balanced_weight(kernel, smooth, hadamard_signs)), None)
    else:
        qt = quantize(balanced_weight(kernel, smooth, hadamard_signs), layer.weight_spec())
    qvalue = pack_int4(qt.values) if layer.packed else qt.values
    return QuantizedWeight(
        qvalue=qvalue,
        scale=qt.scale,
        zero_point=qt.zero_point,
        smooth=smooth,
        hadamard_signs=hadamard_signs,
        act_scale=None if act_scale is None else jnp.asarray(act_scale, jnp.float32).reshape(()),
        act_zero_point=None if act_zero_point is None else jnp.asarray(act_zero_point, jnp.int32).reshape(()),
        layer=layer,
        in_features=k,
    )


def static_act_params(act_absmax_or_minmax, layer: LayerQuant) -> tuple[jax.Array, jax.Array | None]:
    """Static per-tensor activation ``(scale, zero_point)`` from calibrated statistics.

    Symmetric: pass the absmax (scalar). Asymmetric: pass ``(min, max)``. Same formulas as
    :func:`~vidq_jax.quant.quantizers.compute_qparams` on a tensor holding those extremes.
    """
    spec = layer.act_spec()
    if spec is None:
        raise ValueError("weight-only layer has no activation parameters")
    spec = QuantSpec(spec.bits, spec.symmetric, "tensor")
    if spec.symmetric:
        probe = jnp.reshape(jnp.asarray(act_absmax_or_minmax, jnp.float32), (1,))
    else:
        lo, hi = act_absmax_or_minmax
        probe = jnp.stack([jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)])
    return compute_qparams(probe, spec)


__all__ = [
    "QuantizedWeight",
    "balanced_weight",
    "integer_accumulators",
    "integer_linear",
    "kernel_prenorm",
    "pallas_output",
    "quantize_weight",
    "static_act_params",
]

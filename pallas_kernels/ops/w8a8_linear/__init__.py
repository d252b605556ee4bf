"""W8A8 linear: dynamic per-token int8 activations, per-channel int8 weights ``(N, K)``.

No kernel of its own: the dispatch composes the per-token quantizer (``ops.quantize``) and the
int8 GEMM with its fused epilogue (``ops.int8_matmul``); semantics in ``reference.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._compat import on_gpu
from pallas_kernels._debug import debug_override
from pallas_kernels.ops.int8_matmul import column_blocks, resolve_backend, scaled_gemm
from pallas_kernels.ops.quantize.reference import CODE_DTYPES, token_dot
from pallas_kernels.ops.quantize import quantize_per_token
from pallas_kernels.ops.rotate_quantize import input_ref, rotate_quantize
from pallas_kernels.ops.w8a8_linear.reference import w8a8_linear_dequant_ref, w8a8_linear_ref


def check_linear_args(x: jax.Array, qweight: jax.Array, k_weight: int, w_scale: jax.Array) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (M, K) (flatten leading dims); got {x.shape}")
    if x.shape[1] != k_weight:
        raise ValueError(f"K mismatch: x {x.shape} vs weight {qweight.shape}")
    if w_scale.shape[0] != qweight.shape[0]:
        raise ValueError(f"w_scale {w_scale.shape} does not match N={qweight.shape[0]}")


def w8a8_linear(
    x: jax.Array,
    qweight: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    out_dtype: jnp.dtype = jnp.bfloat16,
    backend: str = "auto",
    activation: str | None = None,
    splits: int = 1,
    act_quant: str = "auto",
    approx_gelu: bool = True,
    fuse_activation: bool = True,
    rotation: tuple | None = None,
    w_zero_point: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
    smooth: jax.Array | None = None,
    prenorm: tuple | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
    """W8A8 linear ``x (M, K) -> (M, N)`` (then ``activation``, fused into the epilogue).

    ``x`` bf16/f32 is quantized per token (``pallas_kernels.ops.quantize``) into the codes of the
    weight — int8, or FP8 e4m3 for a ``float8_e4m3fn`` ``qweight`` (:func:`pallas_kernels.fp8_linear`) —
    multiplied with ``qweight (N, K)`` in the quantized GEMM (int32 / float32 accumulation) whose
    epilogue applies ``scale_t[:, None] * w_scale[None, :] + bias`` and casts to ``out_dtype``.
    ``backend``: ``auto`` (Mosaic GPU on Hopper, else XLA), ``mosaic``, ``triton``
    (interpret mode off GPU), ``xla``/``reference``.
    ``splits > 1``: a tuple of ``splits`` outputs ``(M, N / splits)`` (column blocks, e.g. q, k, v of a
    fused qkv), written by ONE GEMM over the whole weight on the same quantized ``x`` (Mosaic GPU: each output
    tile stored into its block; elsewhere one GEMM per block, ``$PALLAS_KERNELS_DEBUG`` ``fuse_splits=0`` too):
    every block is a contiguous array, so the consumer (cuDNN attention) needs no copy of a strided slice.
    ``act_quant``: the quantizer of ``x`` (:func:`activation_quant_backend`); ``approx_gelu``,
    ``fuse_activation``: Mosaic GPU epilogue options (:func:`pallas_kernels.int8_gemm`).
    ``rotation=(h_base, signs)``: the GEMM input is the randomized Hadamard rotation of ``x``
    (:func:`quantize_input`; the weight rows must be rotated the same way).
    ``w_zero_point (N,)`` int32: asymmetric weights ``w = (q + z) · s``; the quantizer also emits the
    per-token code sums and the epilogue adds ``z[n] · Σ_k q_x[m, k]`` in int32 (no float32 output,
    no second quantization pass). ``residual (M, N)`` / ``gate (G, N)``: the output is
    ``residual + gate · y`` (``gate`` row ``g`` for rows ``[g·M/G, (g+1)·M/G)``), fused into the
    epilogue (see :func:`pallas_kernels.int8_gemm`); not with ``splits > 1``.
    ``rank1=(alpha (K,), beta (N,)[, u_scale (M,)])``: a rank-1 float branch ``u ⊗ beta`` with
    ``u[m] = u_scale[m] · (x̂[m] · alpha)`` on the quantized GEMM input ``x̂`` (dequantized; rotated with
    ``rotation``) — Q-VDiT's TQE branch: the quantizer kernel writes ``u`` next to the scale
    (:func:`pallas_kernels.quantize_per_token` ``alpha=``) and the epilogue adds ``u[m] · beta[n]`` after
    the bias, before the activation (``int8_matmul.reference.rank1_ref``).
    ``smooth (K,)`` / ``prenorm=(shift (G, K), scale (G, K), eps)``: the GEMM input's producer, fused into
    the quantizer where it can be (:func:`quantize_input`): ``x · smooth``, or
    ``(LayerNorm(x) · (1 + scale[g]) + shift[g]) · smooth`` of the pre-LayerNorm stream ``x``.
    """
    if qweight.dtype not in CODE_DTYPES:
        raise TypeError(f"qweight must be int8 or float8_e4m3fn, got {qweight.dtype}")
    check_linear_args(x, qweight, qweight.shape[1], w_scale)
    check_epilogue_args(splits, w_zero_point, qweight.shape[0], residual, gate)
    alpha, beta, u_scale = rank1_parts(rank1, x.shape[0], qweight.shape[1], qweight.shape[0])
    op = "w8a8_linear" if qweight.dtype == jnp.int8 else "fp8_linear"
    be = resolve_backend(backend, op)
    zp = w_zero_point is not None
    xq, xs, *rest = quantize_input(x, be, act_quant, rotation, row_sum=zp, dtype=qweight.dtype, alpha=alpha,
                                   u_scale=u_scale, smooth=smooth, prenorm=prenorm)
    # splits > 1: ONE GEMM writes the column blocks as separate arrays (fuse_splits=False: one GEMM per block)
    return scaled_gemm(xq, qweight, xs, w_scale, bias, out_dtype=out_dtype, backend=be, op=op, activation=activation,
                       approx_gelu=approx_gelu, fuse_activation=fuse_activation, w_zero=w_zero_point,
                       x_row_sum=rest[0] if zp else None, residual=residual, gate=gate,
                       rank1=None if beta is None else (rest[-1], beta), out_splits=splits,
                       fuse_splits=debug_override("fuse_splits", True))


def rank1_parts(rank1: tuple | None, m: int, k: int, n: int) -> tuple:
    """A linear's ``rank1=(alpha (K,), beta (N,)[, u_scale (M,)])`` as ``(alpha, beta, u_scale)``
    (``None``s without it), shapes checked (one-line ValueErrors)."""
    if rank1 is None:
        return None, None, None
    if not isinstance(rank1, (tuple, list)) or len(rank1) not in (2, 3):
        raise ValueError("rank1 must be (alpha (K,), beta (N,)) or (alpha, beta, u_scale (M,))")
    alpha, beta, u_scale = (*rank1, None)[:3]
    for name, a, want in (("alpha", alpha, (k,)), ("beta", beta, (n,)), ("u_scale", u_scale, (m,))):
        if a is not None and jnp.shape(a) != want:
            raise ValueError(f"rank1 {name} must be {want}, got {jnp.shape(a)}")
    return alpha, beta, u_scale


def check_epilogue_args(splits: int, w_zero_point: jax.Array | None, n: int, residual=None, gate=None) -> None:
    """Shapes of the epilogue extras of a linear (one-line ValueErrors)."""
    if w_zero_point is not None and jnp.shape(w_zero_point) != (n,):
        raise ValueError(f"w_zero_point must be (N,) = ({n},) (per output channel), got {jnp.shape(w_zero_point)}")
    if splits > 1 and (residual is not None or gate is not None):
        raise ValueError("residual/gate apply to a whole output: not with splits > 1")


ACT_QUANT_CHOICES = ("auto", "xla", "triton")


def quantize_input(x: jax.Array, gemm_backend: str, act_quant: str = "auto",
                   rotation: tuple | None = None, row_sum: bool = False, dtype=jnp.int8,
                   alpha: jax.Array | None = None, u_scale: jax.Array | None = None,
                   smooth: jax.Array | None = None, prenorm: tuple | None = None) -> tuple[jax.Array, ...]:
    """The int8 input ``(q (M, K), scale (M, 1))`` of a W8A8/W4A8 GEMM: ``x`` quantized per token, or,
    with ``rotation=(h_base, signs)``, its randomized Hadamard rotation
    ``x · diag(signs) · (H_b ⊗ H_p) / sqrt(K)`` quantized per token in one fused pass
    (:func:`pallas_kernels.rotate_quantize`: read x once, rotate in registers, write int8 + scale);
    ``row_sum=True`` adds the int32 code sums ``(M, 1)`` (reduced by the same kernel); ``dtype``: int8
    or FP8 e4m3 codes; ``alpha (K,)`` adds the float32 ``u = scale · (q · alpha)`` ``(M, 1)`` (times
    ``u_scale (M,)``), last: reduced by the per-token quantizer kernel; the rotating one has no such
    output yet, so rotated inputs get ``u`` from their codes in XLA (one extra read of the int8 codes).
    The quantizer follows :func:`activation_quant_backend` (Pallas kernel next to Pallas GEMMs on GPU).

    The producer of the GEMM input (:func:`producer_args`): ``smooth (K,)`` multiplies ``x`` per channel;
    ``prenorm=(shift (G, K), scale (G, K), eps)`` makes ``x`` the pre-LayerNorm stream and the input
    ``LayerNorm(x) · (1 + scale[g]) + shift[g]`` (then ``· smooth``), rows in ``G`` equal groups. The result
    is rounded to bf16 as a producer pass would write it; a rotated input gets both inside the rotating
    quantizer's one pass (:func:`pallas_kernels.rotate_quantize` ``prenorm=``/``bf16_input``), any other in
    an XLA pass (which XLA fuses with the LayerNorm) before the per-token quantizer (every input with
    ``$PALLAS_KERNELS_DEBUG`` ``fuse_producer=0``: the A/B of the fusion)."""
    qb = activation_quant_backend(gemm_backend, act_quant)
    if rotation is None or x.dtype != jnp.bfloat16 or not debug_override("fuse_producer", True):
        x, smooth, prenorm = produced_input(x, smooth, prenorm), None, None
    smooth, pn = producer_args(x.shape[-1], smooth, prenorm)
    if rotation is None:
        return quantize_per_token(x, backend=qb, row_sum=row_sum, dtype=dtype, alpha=alpha, u_scale=u_scale)
    h_base, signs = rotation
    outs = rotate_quantize(x, h_base, signs, smooth, backend="auto" if qb == "triton" else "xla", row_sum=row_sum,
                           dtype=dtype, prenorm=pn, bf16_input=True)
    return outs if alpha is None else tuple(outs) + (token_dot(outs[0], outs[1], alpha, u_scale),)


def producer_args(k: int, smooth: jax.Array | None, prenorm: tuple | None) -> tuple:
    """``(smooth_mult, prenorm)`` for :func:`pallas_kernels.rotate_quantize` from a linear's ``smooth`` and
    ``prenorm=(shift, scale, eps)``: the smoothing folds into the LayerNorm's affine ``a = (1 + scale) ·
    smooth``, ``c = shift · smooth`` (float32 ``(G, K)``)."""
    if prenorm is None:
        return smooth, None
    if len(prenorm) != 3:
        raise ValueError(f"prenorm must be (shift (G, K), scale (G, K), eps), got {len(prenorm)} items")
    shift, scale, eps = prenorm
    shift = jnp.asarray(shift, jnp.float32).reshape(-1, k)
    scale = jnp.asarray(scale, jnp.float32).reshape(-1, k)
    a, c = 1.0 + scale, shift
    if smooth is not None:
        m = jnp.asarray(smooth, jnp.float32)
        a, c = a * m, c * m
    return None, (a, c, eps)


def produced_input(x: jax.Array, smooth: jax.Array | None, prenorm: tuple | None) -> jax.Array:
    """The GEMM input a separate producer pass writes (:func:`quantize_input`'s ``smooth`` / ``prenorm``,
    rounded to bf16 as ``rotate_quantize.reference.input_ref`` defines it); ``x`` itself without either."""
    if smooth is None and prenorm is None:
        return x
    smooth, pn = producer_args(x.shape[-1], smooth, prenorm)
    return input_ref(x, smooth, pn, bf16_input=True).astype(jnp.bfloat16)


def activation_quant_backend(gemm_backend: str, act_quant: str = "auto") -> str:
    """Quantizer paired with a GEMM backend. ``act_quant="auto"`` (or ``"triton"``): the Pallas
    row-block kernel next to Pallas GEMMs on GPU, the XLA fusion otherwise (and for the all-XLA
    baseline).

    ``act_quant="xla"`` makes the Pallas GEMMs take their int8 input from an XLA fusion instead,
    which XLA can merge with the op that produces ``x`` (LayerNorm + modulate, GELU) so that the
    bf16 activation is never written. ``$PALLAS_KERNELS_DEBUG`` may force the choice."""
    choice = debug_override("act_quant", act_quant)
    if choice not in ACT_QUANT_CHOICES:
        raise ValueError(f"act_quant={choice!r}: expected one of {ACT_QUANT_CHOICES}")
    if choice == "xla":
        return "xla"
    return "triton" if gemm_backend in ("mosaic", "triton") and on_gpu() else "xla"


__all__ = [
    "ACT_QUANT_CHOICES",
    "activation_quant_backend",
    "check_epilogue_args",
    "check_linear_args",
    "column_blocks",
    "produced_input",
    "producer_args",
    "quantize_input",
    "rank1_parts",
    "w8a8_linear",
    "w8a8_linear_dequant_ref",
    "w8a8_linear_ref",
]

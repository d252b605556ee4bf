"""The one backend seam: which implementation computes a quantized layer (and attention).

Vocabulary (:data:`BACKENDS`), resolved in ONE place (:func:`resolve`):

* ``auto`` — the best backend of the machine the layer runs on: ``pallas`` on a Hopper GPU, ``xla``
  elsewhere. Resolved when the layer is traced, so a quantized folder saved on one machine runs with the
  best backend of another (the backend is never part of a saved recipe).
* ``simulate`` — fake quantization in float32 (the numerics reference).
* ``xla`` — integer ``dot_general`` (int8 x int8 -> int32) + float32 epilogue.
* ``pallas`` — the fused kernels of :mod:`pallas_kernels` (Mosaic GPU wgmma on Hopper, Pallas-Triton
  elsewhere on GPU: the kernel package picks its sub-backend); formats the kernels do not take fall back to
  ``xla`` (logged once per reason).

The kernel package is imported here, normally, behind one guard (:data:`kernels` is ``None`` when it
cannot be imported; ``pallas`` then falls back to ``xla``); the quantized layers reach the kernels only
through this module (the int4 storage layout, ``pallas_kernels.pack_int4``, is the one other import).

No environment variable is read here (the kernel package's one documented debug override,
``$PALLAS_KERNELS_DEBUG``, is its own business).

This module also installs the kernel package's attention implementations behind the models' attention
seam (:mod:`models.attention`): the Pallas frame-attention kernel for the temporal attention of video
models in half precision on a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from models import attention as attention_seam
from vidq_jax.quant.quantizers import rows_by_groups

logger = logging.getLogger("vidq_jax.quant")

BACKENDS: tuple[str, ...] = ("auto", "simulate", "xla", "pallas")

try:  # the kernel package is optional at run time (e.g. an exotic jax build without Pallas)
    import pallas_kernels as kernels
except Exception as _e:  # noqa: BLE001 - any import failure means "no kernels here"
    kernels = None  # type: ignore[assignment]
    _KERNEL_IMPORT_ERROR: str | None = f"{type(_e).__name__}: {_e}"
else:
    _KERNEL_IMPORT_ERROR = None

_LOGGED: set[str] = set()


def log_once(reason: str) -> None:
    """Log a fallback reason once per process."""
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        logger.warning("vidq_jax.quant: pallas backend falls back to xla: %s", reason)


def check(backend: str) -> str:
    """``backend`` if it is a known name (ValueError listing the vocabulary otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} unknown; choose one of {BACKENDS}")
    return backend


def is_hopper() -> bool:
    """Whether the default device is a Hopper GPU with the kernel package importable."""
    return kernels is not None and bool(kernels.is_hopper())


def resolve(backend: str) -> str:
    """The concrete backend for ``backend`` on this machine (``auto`` -> ``pallas`` on Hopper, else ``xla``)."""
    check(backend)
    if backend != "auto":
        return backend
    return "pallas" if is_hopper() else "xla"


# ------------------------------------------------------------------------------------------------
# pallas: the fused linear kernels
# ------------------------------------------------------------------------------------------------


def pallas_dense(rec: Any, x: jax.Array, bias: jax.Array | None, out_dtype, activation: str | None = None,
                 splits: int = 1, *, residual: jax.Array | None = None,
                 gate: jax.Array | None = None, rank1: tuple | None = None,
                 prenorm: tuple | None = None) -> jax.Array | tuple[jax.Array, ...] | None:
    """Run a :class:`~vidq_jax.quant.record.QuantizedWeight` on ``x (M, K)`` (not yet balanced) with the
    fused kernels if its format fits (int8 W8A8 / W4A8, or FP8 e4m3 W8A8 for ``layer.fp8``); ``None`` means
    "use xla instead".

    Balancing: the smoothing multiplier ``1 / s`` goes to the linears as ``smooth=`` and the online Hadamard
    rotation as ``rotation=``: a rotated layer gets both inside the quantizer kernel
    (:func:`pallas_kernels.rotate_quantize`: bf16 read once, smoothed and rotated in registers, int8 + scale
    written), an unrotated one the smoothing in an XLA multiply fused into the op producing ``x``.

    ``prenorm=(shift (G, K), scale (G, K), eps)`` (float32, from the Dense seam's ``prenorm=``,
    :func:`vidq_jax.quant.record.kernel_prenorm`): ``x`` is the pre-LayerNorm stream and the layer's input
    ``LayerNorm(x) · (1 + scale[g]) + shift[g]`` (rows in ``G`` equal slabs), computed by the linears'
    producer — for rotated layers inside the rotating quantizer, in the same one pass.

    Per-channel weights, symmetric or asymmetric (ViDiT-Q's default): an asymmetric weight's zero-point
    term ``z_w[n] · Σ_k q_x[m, k]`` is added in int32 inside the GEMM epilogue from the code sums the
    activation quantizer writes next to its scales (no float32 output, no second quantization pass);
    symmetric per-group packed int4 weights run the W4A8 per-group kernel. The activation, the column
    split (``splits > 1``: a tuple of column blocks, one GEMM each on one quantized ``x``) and the gated
    residual ``residual (M, N) + gate (G, N) · y`` (gate row ``g`` for rows ``[g·M/G, (g+1)·M/G)``)
    are fused into the epilogue.

    Q-DiT's formats — per-token-per-group activations, or per-group weights the W4A8 kernel does not take
    (asymmetric, int8 codes of 5..8 bits) — run :func:`pallas_kernels.group_gemm` (:func:`needs_group_gemm`).

    ``rank1=(alpha (K,), beta (N,)[, u_scale (M,)])``: a rank-1 float branch on the balanced, quantized
    input (Q-VDiT's TQE, :mod:`vidq_jax.quant.tqe`): the quantizer kernel writes ``u = u_scale · (x̂ · alpha)``
    next to its scale and the GEMM epilogue adds ``u ⊗ beta`` before the activation (the linears'
    ``rank1=``); the group GEMM has no such term (``None`` then).
    """
    from vidq_jax.quant.hadamard import base_hadamard, hadamard_factors

    lq = rec.layer
    if kernels is None:
        log_once(f"cannot import pallas_kernels ({_KERNEL_IMPORT_ERROR})")
        return None
    if rank1 is not None and needs_group_gemm(lq):  # (tqe) the group GEMM has no rank-1 epilogue term
        log_once("the group GEMM takes no rank-1 (TQE) branch")
        return None
    if prenorm is not None and needs_group_gemm(lq):  # its input is quantized by XLA, from the normed x
        log_once("the group GEMM takes no LayerNorm + modulate prologue (prenorm)")
        return None
    if needs_group_gemm(lq):
        return _pallas_group_dense(rec, x, bias, out_dtype, activation, splits, residual=residual, gate=gate)
    if not (lq.a_bits == 8 and lq.a_granularity == "token" and lq.a_symmetric and not lq.a_static):
        log_once(
            "kernels need dynamic symmetric per-token int8 activations, got "
            f"a_bits={lq.a_bits} a_granularity={lq.a_granularity} a_symmetric={lq.a_symmetric}"
        )
        return None
    # w4a8 kernel: per-group scales
    grouped = not lq.fp8 and lq.w_granularity == "group" and lq.packed and lq.w_symmetric
    if lq.w_granularity != "channel" and not grouped:
        log_once(
            "kernels take per-channel weight scales (per-group only for symmetric packed int4), got "
            f"w_granularity={lq.w_granularity} w_symmetric={lq.w_symmetric} packed={lq.packed}"
        )
        return None
    # e4m3 W8A8: the FP8 linear (the same quantizer kernels, GEMMs and epilogue on e4m3 codes)
    fn = kernels.fp8_linear if lq.fp8 else kernels.w4a8_linear if lq.packed else kernels.w8a8_linear
    kwargs: dict[str, Any] = {"group_size": lq.w_group_size} if grouped else {}
    if rec.smooth is not None:
        kwargs["smooth"] = rec.smooth_multiplier()  # x · (1 / s), by the quantizer (kernel or XLA)
    if prenorm is not None:
        kwargs["prenorm"] = prenorm  # LayerNorm + modulate of the raw x, by the same producer
    if rec.hadamard_signs is not None:
        kwargs["rotation"] = (base_hadamard(hadamard_factors(rec.in_features)[0]), rec.hadamard_signs)
    if rec.zero_point is not None:
        kwargs["w_zero_point"] = rec.zero_point.astype(jnp.int32)
    if activation is not None:
        kwargs["activation"] = activation  # fused into the epilogue
    if splits > 1:
        kwargs["splits"] = splits  # one GEMM per column block, one quantized x
    if residual is not None:
        kwargs["residual"] = residual
    if gate is not None:
        kwargs["gate"] = gate
    if rank1 is not None:
        kwargs["rank1"] = rank1  # (tqe) u by the quantizer kernel, u ⊗ beta in the epilogue
    return fn(
        x.astype(jnp.bfloat16),
        rec.qvalue,
        rec.scale.astype(jnp.float32),
        None if bias is None else bias.astype(jnp.float32),
        out_dtype=out_dtype,
        **kwargs,
    )


def needs_group_gemm(lq: Any) -> bool:
    """Whether a layer runs Q-DiT's group GEMM (:func:`pallas_kernels.group_gemm`) on ``pallas``: activations
    quantized per token and group, or per-group weights the per-token W4A8 kernel does not take
    (asymmetric, or unpacked int8 codes), with integer codes (not FP8)."""
    if lq.a_bits is None or lq.fp8:
        return False
    fast_grouped = lq.packed and lq.w_symmetric and lq.a_granularity == "token" and lq.a_symmetric
    return lq.a_granularity == "group" or (lq.w_granularity == "group" and not fast_grouped)


def _pallas_group_dense(rec: Any, x: jax.Array, bias: jax.Array | None, out_dtype, activation: str | None,
                        splits: int, *, residual: jax.Array | None, gate: jax.Array | None) -> jax.Array | None:
    """Q-DiT's layers on :func:`pallas_kernels.group_gemm`: ``x`` balanced and quantized by the record's own
    jnp quantizer (XLA fuses it; the codes are the ``xla`` backend's, bit for bit), scales and zero points of
    both sides per group (a per-token / per-channel side broadcast over the groups), the int4 or int8 codes
    multiplied in the Pallas-Triton K loop; ``None`` (-> ``xla``, logged once) for shapes without a tiling."""
    lq = rec.layer
    m, k = x.shape
    n = rec.out_features
    gs = lq.group_size or k
    packed = rec.qvalue.dtype == jnp.uint8
    if kernels.group_gemm_tiling(m, k, n, gs, packed) is None:
        log_once(f"group GEMM has no tiling for K={k}, N={n}, group_size={gs} (packed int4={packed})")
        return None
    q, s, z = rec.quantize_activation(rec.balance(x.astype(jnp.float32)))
    g = k // gs
    return kernels.group_gemm(
        q, rows_by_groups(s, m, g), rec.qvalue, rows_by_groups(rec.scale.astype(jnp.float32), n, g),
        None if bias is None else bias.astype(jnp.float32), x_zero=rows_by_groups(z, m, g),
        w_zero=rows_by_groups(rec.zero_point, n, g), out_dtype=out_dtype, activation=activation, splits=splits,
        residual=residual, gate=gate)


# ------------------------------------------------------------------------------------------------
# attention implementations behind models.attention
# ------------------------------------------------------------------------------------------------


if kernels is not None:
    # temporal attention in the tokens' own layout: the kernel package's dispatch runs the Pallas kernel
    # for half precision on a GPU (cuDNN flash attention's 64x128 tiles waste most of their work on 16
    # frames) and its einsum reference otherwise (float32 parity)
    attention_seam.register("temporal", kernels.frame_attention)


__all__ = ["BACKENDS", "check", "is_hopper", "kernels", "log_once", "needs_group_gemm",
           "pallas_dense", "resolve"]

"""Plain-jnp/XLA definitions of the int8 GEMM and of the dequantizing epilogue.

``int8_matmul_ref`` is also the production ``xla`` backend: on GPU XLA lowers it to a cuBLASLt
``s8 x s8 -> s32`` GEMM (weights ``(N, K)``, K contiguous, so no layout copy).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

# Contract the K axis (dim 1) of x (M, K) with the K axis (dim 1) of w (N, K).
NT_DIMS = (((1,), (1,)), ((), ()))


def int8_matmul_ref(xq: jax.Array, wq: jax.Array) -> jax.Array:
    """``xq (M, K) int8 @ wq (N, K)^T int8 -> (M, N) int32`` with exact int32 accumulation."""
    return lax.dot_general(xq, wq, NT_DIMS, preferred_element_type=jnp.int32)


def gemm_ref(xq: jax.Array, wq: jax.Array) -> jax.Array:
    """``xq (M, K) @ wq (N, K)^T`` of quantized codes: int8 -> int32 (:func:`int8_matmul_ref`), FP8
    e4m3 -> float32 (``lax.dot_general`` on the e4m3 operands with ``preferred_element_type=float32``:
    XLA's own FP8 GEMM on Hopper, the baseline of the FP8 kernels)."""
    acc = jnp.int32 if jnp.issubdtype(xq.dtype, jnp.integer) else jnp.float32
    return lax.dot_general(xq, wq, NT_DIMS, preferred_element_type=acc)


def column_blocks(a: jax.Array | None, splits: int, axis: int = -1) -> tuple[jax.Array | None, ...]:
    """The ``splits`` equal blocks of ``a`` along ``axis``, as a tuple (``(a,)`` for one block).

    THE column split of a linear: its output ``(..., N)`` along the last axis, or its ``(N, K)``
    weight, ``(N,)``/``(N, G)`` scales and ``(N,)`` bias along axis 0 (``None`` gives ``None``s)."""
    if a is None:
        return (None,) * splits
    n = a.shape[axis]
    if splits < 1 or n % splits:
        raise ValueError(f"N={n} output features do not split into {splits} equal blocks")
    if splits == 1:
        return (a,)
    blk, lead = n // splits, (slice(None),) * (axis % a.ndim)
    return tuple(a[lead + (slice(i * blk, (i + 1) * blk),)] for i in range(splits))


_GELU_2C = 2.0 * 0.7978845608028654  # 2·sqrt(2/π)


def _gelu_tanh_exp(y: jax.Array) -> jax.Array:
    """``0.5·y·(1 + tanh(u)) = y / (1 + exp(-2u))``: only ``exp`` and a division (lowered by
    Mosaic GPU and Triton alike; saturates correctly at ±inf)."""
    return y / (1.0 + jnp.exp(-(_GELU_2C * (y + 0.044715 * (y * y * y)))))


def _gelu_tanh_tanh(y: jax.Array) -> jax.Array:
    """``0.5·y·(1 + tanh(u))``: one ``tanh.approx`` under Mosaic GPU's ``approx_math``."""
    u2 = _GELU_2C * (y + 0.044715 * (y * y * y))
    return 0.5 * y * (1.0 + jnp.tanh(0.5 * u2))


@dataclasses.dataclass(frozen=True, eq=False)
class EpilogueActivation:
    """An activation the GEMM epilogues can apply after the bias: calling it is the reference
    (float32 in, float32 out); ``kernel_forms`` are the formulas the kernels evaluate in-register
    (``"exp"``: every kernel; ``"tanh"``: Mosaic GPU with ``approx_math``)."""

    reference: Callable[[jax.Array], jax.Array]
    kernel_forms: Mapping[str, Callable[[jax.Array], jax.Array]]

    def __call__(self, y: jax.Array) -> jax.Array:
        return self.reference(y)


# THE list of epilogue activations (name -> reference function). The next layer's producer then
# reads the activated values: no separate elementwise pass over the (M, N) output.
EPILOGUE_ACTIVATIONS: dict[str, EpilogueActivation] = {
    "gelu_tanh": EpilogueActivation(
        reference=functools.partial(jax.nn.gelu, approximate=True),
        kernel_forms={"exp": _gelu_tanh_exp, "tanh": _gelu_tanh_tanh},
    ),
}


def check_activation(activation: str | None) -> None:
    if activation is not None and activation not in EPILOGUE_ACTIVATIONS:
        raise ValueError(f"unsupported epilogue activation {activation!r}; supported: {tuple(EPILOGUE_ACTIVATIONS)}")


def apply_activation(y: jax.Array, activation: str | None, *, in_kernel: bool = False,
                     form: str = "exp") -> jax.Array:
    """``activation(y)`` in float32 (identity for ``None``): the reference
    (``EPILOGUE_ACTIVATIONS[activation]``), or with ``in_kernel=True`` its in-kernel ``form``."""
    check_activation(activation)
    if activation is None:
        return y
    act = EPILOGUE_ACTIVATIONS[activation]
    return act.kernel_forms[form](y) if in_kernel else act(y)


def check_zero_point(w_zero, x_row_sum) -> None:
    if (w_zero is None) != (x_row_sum is None):
        raise ValueError("w_zero and x_row_sum go together (the zero-point term needs both)")


def zero_point_ref(acc: jax.Array, w_zero: jax.Array | None, x_row_sum: jax.Array | None) -> jax.Array:
    """``acc[m, n] + x_row_sum[m] · w_zero[n]`` in int32 (exact): the weight zero-point term of
    ``Σ_k q_x[m,k] · (q_w[n,k] + z_w[n])``. ``x_row_sum`` ``(M,)``/``(M, 1)`` int32 (the
    quantizer's code sums), ``w_zero`` ``(N,)`` int32; both or neither."""
    check_zero_point(w_zero, x_row_sum)
    if w_zero is None:
        return acc
    rs = jnp.reshape(x_row_sum, (-1, 1)).astype(jnp.int32)
    return acc + rs * jnp.reshape(w_zero, (1, -1)).astype(jnp.int32)


def check_rank1(rank1: tuple | None, m: int, n: int) -> None:
    """``rank1 = (u (M,)|(M, 1), beta (N,))`` or ``None`` (one-line ValueError naming the bad operand)."""
    if rank1 is None:
        return
    if not isinstance(rank1, (tuple, list)) or len(rank1) != 2:
        raise ValueError("rank1 must be a pair (u (M,), beta (N,))")
    u, beta = rank1
    if jnp.size(u) != m or jnp.shape(u) not in ((m,), (m, 1)):
        raise ValueError(f"rank1 u must be (M,) or (M, 1) with M={m}, got {jnp.shape(u)}")
    if jnp.shape(beta) != (n,):
        raise ValueError(f"rank1 beta must be (N,) = ({n},), got {jnp.shape(beta)}")


def rank1_ref(y: jax.Array, rank1: tuple | None) -> jax.Array:
    """``y[m, n] + u[m] · beta[n]`` in float32 (``rank1 = (u, beta)``; ``None``: ``y``): a rank-1
    floating-point correction of the output, e.g. Q-VDiT's TQE branch ``(x̂·α) βᵀ`` with ``u`` written
    by the activation quantizer (``quantize_per_token(alpha=)``)."""
    if rank1 is None:
        return y
    u, beta = rank1
    return y + jnp.reshape(u, (-1, 1)).astype(jnp.float32) * jnp.reshape(beta, (1, -1)).astype(jnp.float32)


def gate_rows(m: int, gate: jax.Array | None) -> int:
    """Rows sharing one gate row: ``gate (G, N)`` gates rows ``[g·M/G, (g+1)·M/G)`` (``G`` divides
    ``M``: one gate row per batch element of a flattened ``(B, L, N)`` output)."""
    if gate is None:
        return m
    if gate.ndim != 2 or gate.shape[0] < 1 or m % gate.shape[0]:
        raise ValueError(f"gate must be (G, N) with G dividing M={m}, got {gate.shape}")
    return m // gate.shape[0]


def residual_gate_ref(y: jax.Array, residual: jax.Array | None, gate: jax.Array | None) -> jax.Array:
    """``residual + gate[m // (M/G)] · y`` in float32 (either term optional): the gated residual
    add of a DiT block (``x + gate_msa · attn(x)``) applied to the linear's float32 output."""
    if gate is not None:
        rows = gate_rows(y.shape[0], gate)
        y = y * jnp.repeat(gate.astype(jnp.float32), rows, axis=0, total_repeat_length=y.shape[0])
    if residual is not None:
        y = residual.astype(jnp.float32) + y
    return y


def scaled_epilogue_ref(
    acc: jax.Array,
    x_scale: jax.Array,
    w_scale: jax.Array,
    bias: jax.Array | None,
    out_dtype: jnp.dtype,
    activation: str | None = None,
    *,
    w_zero: jax.Array | None = None,
    x_row_sum: jax.Array | None = None,
    residual: jax.Array | None = None,
    gate: jax.Array | None = None,
    rank1: tuple | None = None,
) -> jax.Array:
    """THE fused GEMM epilogue, in order: the zero-point term in int32 (:func:`zero_point_ref`),
    ``activation(acc' * x_scale[:, None] * w_scale[None, :] + bias + u[:, None] * beta[None, :])`` in
    float32 (the rank-1 term :func:`rank1_ref`, ``rank1 = (u (M,), beta (N,))``, optional), the gated
    residual (:func:`residual_gate_ref`), cast to ``out_dtype``. ``x_scale`` is ``(M, 1)`` or ``(M,)``;
    ``w_scale`` and ``bias`` are ``(N,)``; ``residual (M, N)``; ``gate (G, N)``.
    ``acc`` may be float32 (FP8 GEMMs; no zero points then).
    """
    acc = zero_point_ref(acc, w_zero, x_row_sum)
    xs = jnp.reshape(x_scale, (-1, 1)).astype(jnp.float32)
    y = acc.astype(jnp.float32) * xs * w_scale.astype(jnp.float32)[None, :]
    if bias is not None:
        y = y + bias.astype(jnp.float32)[None, :]
    y = apply_activation(rank1_ref(y, rank1), activation)
    return residual_gate_ref(y, residual, gate).astype(out_dtype)

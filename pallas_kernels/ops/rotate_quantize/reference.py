"""Plain-jnp definition of "smooth + randomized Hadamard rotation + per-token int8" (the contract).

For ``x (..., K)`` with ``K = b · p`` (``b`` = order of the caller's base matrix ``h_base``,
``p = 2^k``), channel index ``i = i_b · p + i_p``:

* ``x' = (x · smooth_mult) · signs``                    float32, per channel (both optional);
  with ``prenorm=(a (G, K), c (G, K), eps)`` the input is first ``u = LayerNorm(x, eps) · a[g] + c[g]``
  (no affine LayerNorm over K, statistics in float32; row ``m`` of the flattened ``(M, K)`` rows in
  group ``g = m // (M / G)``: a DiT block's adaLN ``(1 + scale) · smooth`` and ``shift · smooth``);
  with ``bf16_input`` the multiplier is rounded to bf16 and ``u · smooth_mult`` (or the prenorm
  result) to bf16 before the signs — the value a separate bf16 producer pass would have written
  (:func:`input_ref`);
* ``y  = x' · (H_b ⊗ H_p) / sqrt(K)``                  ``H_p`` = natural-order Sylvester matrix;
* ``(q, scale) = quantize_per_token_ref(y)``            ``scale = max|y_t| / 127`` (zero row → 1),
  ``q = clip(round_half_even(y / scale), -127, 127)`` int8.

The rotation is evaluated exactly as ``vidq_jax.quant.hadamard.hadamard_transform`` does it
(``log2 p`` Walsh–Hadamard butterfly stages, then the ``b × b`` base matmul on the ``(b, p)``
view, then ``* float32(1/sqrt(K))``), so that ``hadamard_transform(x * smooth_mult, signs)``
followed by ``quantize_per_token_ref`` gives the same bits (tested; this package does not import
``vidq_jax``). The kernel package only needs the base matrix: it is construction-agnostic.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.ops.producer.reference import layernorm_noaffine
from pallas_kernels.ops.quantize.reference import quantize_per_token_ref


@functools.lru_cache(maxsize=None)
def sylvester(p: int) -> np.ndarray:
    """Natural-order Sylvester Hadamard matrix of order ``p = 2^k`` (float32 ±1, read-only)."""
    if p < 1 or p & (p - 1):
        raise ValueError(f"Sylvester order must be a power of two, got {p}")
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def split_order(k: int, h_base) -> tuple[int, int]:
    """``(b, p)`` with ``K = b · p``, ``b`` the order of the square ``h_base``, ``p`` a power of 2."""
    shape = np.shape(h_base)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"h_base must be a square (b, b) matrix, got shape {shape}")
    b = int(shape[0])
    p = k // b
    if b * p != k or p < 1 or p & (p - 1):
        raise ValueError(f"K={k} is not b · 2^k for the base order b={b}")
    return b, p


def fwht(x: jax.Array) -> jax.Array:
    """Unnormalised Walsh–Hadamard transform over the last axis (natural/Sylvester order)."""
    p = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < p:
        xv = x.reshape(lead + (p // (2 * h), 2, h))
        a, b = xv[..., 0, :], xv[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(lead + (p,))
        h *= 2
    return x


def check_prenorm(prenorm, m: int, k: int) -> None:
    """ValueError unless ``prenorm=(a, c, eps)`` has ``a``/``c`` of shape ``(G, K)`` with ``G`` dividing
    the ``M`` rows."""
    if len(prenorm) != 3:
        raise ValueError(f"prenorm must be (a (G, K), c (G, K), eps), got {len(prenorm)} items")
    a, c, _ = prenorm
    if a.ndim != 2 or a.shape[1] != k or c.shape != a.shape:
        raise ValueError(f"prenorm a {a.shape} / c {c.shape} must both be (G, K={k})")
    if a.shape[0] < 1 or m % a.shape[0]:
        raise ValueError(f"prenorm has G={a.shape[0]} row groups, which do not divide M={m} rows")


def input_ref(x: jax.Array, smooth_mult: jax.Array | None = None, prenorm: tuple | None = None,
              bf16_input: bool = False) -> jax.Array:
    """The float32 input of the rotation before the signs (module docstring): ``x · smooth_mult``, or
    ``LayerNorm(x) · a[g] + c[g]`` with ``prenorm`` (then ``smooth_mult`` must be folded into ``a``
    and ``c``); ``bf16_input``: the multiplier and the result rounded to bf16."""
    x = jnp.asarray(x)
    k = x.shape[-1]
    xf = x.astype(jnp.float32)
    if prenorm is not None:
        if smooth_mult is not None:
            raise ValueError("prenorm: fold smooth_mult into its a and c")
        a, c, eps = prenorm
        a, c = jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)
        rows = xf.reshape(-1, k)
        check_prenorm((a, c, eps), rows.shape[0], k)
        g = a.shape[0]
        u = layernorm_noaffine(rows, eps).reshape(g, -1, k) * a[:, None] + c[:, None]
        xf = u.reshape(xf.shape)
    if smooth_mult is not None:
        mult = jnp.asarray(smooth_mult, jnp.float32)
        if bf16_input:
            mult = round_bf16(mult)
        xf = xf * mult
    if bf16_input:
        xf = round_bf16(xf)
    return xf


def round_bf16(x: jax.Array) -> jax.Array:
    """float32 ``x`` rounded to the nearest bf16 value (ties to even), kept float32. ``reduce_precision``,
    not a ``bf16`` round trip: under ``jax.jit`` on a GPU, XLA may drop a convert pair inside a fusion
    (``--xla_allow_excess_precision``, on by default), and the reference would then not round at all."""
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)


def rotate_ref(
    x: jax.Array, h_base, signs: jax.Array | None = None, smooth_mult: jax.Array | None = None,
    prenorm: tuple | None = None, bf16_input: bool = False,
) -> jax.Array:
    """The float32 rotated activation ``y = ((x · smooth_mult) · signs) · (H_b ⊗ H_p) / sqrt(K)``
    (``prenorm`` / ``bf16_input``: the input of :func:`input_ref`)."""
    x = jnp.asarray(x)
    k = x.shape[-1]
    b, p = split_order(k, h_base)
    xf = input_ref(x, smooth_mult, prenorm, bf16_input)
    if signs is not None:
        xf = xf * jnp.asarray(signs, jnp.float32)
    lead = xf.shape[:-1]
    y = xf.reshape(lead + (b, p))
    if p > 1:
        y = fwht(y)
    if b > 1:
        hb = jnp.asarray(h_base, jnp.float32)
        y = jnp.einsum("...ip,ij->...jp", y, hb, precision=jax.lax.Precision.HIGHEST)
    return y.reshape(lead + (k,)) * jnp.float32(1.0 / math.sqrt(k))


def rotate_quantize_ref(
    x: jax.Array, h_base, signs: jax.Array | None = None, smooth_mult: jax.Array | None = None,
    row_sum: bool = False, dtype=jnp.int8, prenorm: tuple | None = None, bf16_input: bool = False,
) -> tuple[jax.Array, ...]:
    """``x (..., K)`` -> ``(int8 (..., K), float32 scale (..., 1))`` of the rotated activation
    (``row_sum=True``: plus the int32 code sums ``(..., 1)``; ``dtype``: int8 or FP8 e4m3 codes; as
    :func:`quantize_per_token_ref`).

    ``h_base (b, b)`` ±1 (any array-like, e.g. ``vidq_jax.quant.hadamard.base_hadamard(36)``),
    ``signs (K,)`` ±1 and ``smooth_mult (K,)`` optional (``None`` = all ones). The scale has the
    trailing unit axis of :func:`pallas_kernels.quantize_per_token_ref` (drop-in replacement).
    """
    return quantize_per_token_ref(rotate_ref(x, h_base, signs, smooth_mult, prenorm, bf16_input),
                                  row_sum=row_sum, dtype=dtype)


__all__ = ["check_prenorm", "fwht", "input_ref", "round_bf16", "rotate_quantize_ref", "rotate_ref", "split_order", "sylvester"]

"""Randomized Hadamard rotation for any channel count used by the models.

Sizes. A Hadamard matrix of order ``n`` can exist only for ``n = 1, 2`` or ``n ≡ 0 (mod 4)``; in
particular none exists of order 9 or 27. We factor ``n = b · 2^k`` with a *base* order ``b`` that
is either 1 (pure Sylvester) or the smallest ``odd(n) · 2^j`` (``j >= 2``) constructible by

* Paley I  — ``b = q + 1``,      ``q`` prime, ``q ≡ 3 (mod 4)``  (12, 20, 44, 60, 72, 108, ...)
* Paley II — ``b = 2 (q + 1)``,  ``q`` prime, ``q ≡ 1 (mod 4)``  (12, 28, 36, 60, 76, 108, ...)

and combine it with a Sylvester block: ``H_n = H_b ⊗ H_{2^k}``. Sizes of the models:

======= ====================== ============================
C       factorization          base construction
======= ====================== ============================
2^k     1 · 2^k                Sylvester only
72      36 · 2                 Paley II, q = 17
1152    36 · 32                Paley II, q = 17
2304    36 · 64                Paley II, q = 17
4608    36 · 128               Paley II, q = 17
3456    108 · 32               Paley I,  q = 107 (27 itself has no Hadamard matrix)
======= ====================== ============================

Odd sizes > 1 and sizes whose odd part needs a base we cannot build (e.g. a prime-power ``q``)
raise :class:`UnsupportedHadamardSize`.

Randomized rotation (orthogonal, normalised)::

    R = diag(s) · H_n / sqrt(n),      s ∈ {±1}^n,      R Rᵀ = I

:func:`hadamard_transform` computes ``y = x · R`` along the last axis *fast*: the ``2^k`` factor
by ``k`` Walsh–Hadamard butterfly stages and the base factor by a ``b × b`` matmul on the
``(..., b, 2^k)`` view (index ``i = i_b · 2^k + i_2``). Cost ``O(n (b + k))`` instead of ``O(n²)``.
``inverse=True`` computes ``x · Rᵀ``. For a linear layer ``y = x Wᵀ`` with ``W (N, K)``:
``(x R)(W R)ᵀ = x R Rᵀ Wᵀ = x Wᵀ`` — rotate activations and weight rows with the same ``R``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# the Walsh–Hadamard butterflies and Sylvester matrix are the kernel package's (its rotate_quantize
# reference evaluates the same rotation bit for bit)
from pallas_kernels.ops.rotate_quantize.reference import fwht, sylvester


class UnsupportedHadamardSize(ValueError):
    """No (constructible) Hadamard factorization for the requested size."""


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    r = int(math.isqrt(q))
    return all(q % d for d in range(3, r + 1, 2))


def _jacobsthal(q: int) -> np.ndarray:
    """``Q[i, j] = χ(j - i)`` with the Legendre symbol ``χ`` modulo the prime ``q``."""
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    chi[(np.arange(1, q) ** 2) % q] = 1
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(q: int) -> np.ndarray:
    """Paley I (q ≡ 3 mod 4): ``H = I + [[0, 1ᵀ], [-1, Q]]`` of order ``q + 1`` (Q skew-symmetric)."""
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return s + np.eye(q + 1, dtype=np.int64)


def _paley2(q: int) -> np.ndarray:
    """Paley II (q ≡ 1 mod 4): conference matrix ``C = [[0, 1ᵀ], [1, Q]]`` (symmetric), then
    ``H = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]]`` of order ``2 (q + 1)``."""
    c = np.zeros((q + 1, q + 1), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    a = np.array([[1, 1], [1, -1]], dtype=np.int64)
    b = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    return np.kron(c, a) + np.kron(np.eye(q + 1, dtype=np.int64), b)


def _construction(order: int) -> str | None:
    """Name of the construction we use for a base of this order, or None."""
    if order in (1, 2):
        return "sylvester"
    if order % 4:
        return None
    if _is_prime(order - 1) and (order - 1) % 4 == 3:
        return "paley1"
    if _is_prime(order // 2 - 1) and (order // 2 - 1) % 4 == 1:
        return "paley2"
    return None


@functools.lru_cache(maxsize=None)
def base_hadamard(order: int) -> np.ndarray:
    """Unnormalised ±1 Hadamard matrix of a base order (``H Hᵀ = order · I``, checked), int8, read-only."""
    kind = _construction(order)
    if kind is None:
        raise UnsupportedHadamardSize(f"no Hadamard construction available for base order {order}")
    if kind == "sylvester":
        h = np.array([[1]], dtype=np.int64) if order == 1 else np.array([[1, 1], [1, -1]], dtype=np.int64)
    elif kind == "paley1":
        h = _paley1(order - 1)
    else:
        h = _paley2(order // 2 - 1)
    if not np.array_equal(h @ h.T, order * np.eye(order, dtype=np.int64)):  # pragma: no cover - math bug guard
        raise AssertionError(f"{kind} construction of order {order} is not orthogonal")
    h = h.astype(np.int8)
    h.setflags(write=False)
    return h


@functools.lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[int, int]:
    """``n = b · p`` with base order ``b`` (smallest constructible) and ``p = 2^k``; see module table."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UnsupportedHadamardSize(f"Hadamard size must be a positive integer, got {n!r}")
    n = int(n)
    v = (n & -n).bit_length() - 1  # power of two in n
    odd = n >> v
    if odd == 1:
        return 1, n
    for j in range(2, v + 1):
        b = odd << j
        if _construction(b) is not None:
            return b, n // b
    if v < 2:
        raise UnsupportedHadamardSize(
            f"no Hadamard matrix of order {n} exists (orders must be 1, 2 or a multiple of 4; "
            f"{n} = {odd}·2^{v}, e.g. 9 and 27 have none, while 3456 = 27·2^7 = 108·32 is supported)"
        )
    raise UnsupportedHadamardSize(
        f"Hadamard size {n} = {odd}·2^{v} unsupported: no Paley I/II base of order {odd}·2^j (2 <= j <= {v}) "
        "with a prime q is available"
    )


def is_supported(n: int) -> bool:
    """True if :func:`hadamard_factors` can factor ``n``."""
    try:
        hadamard_factors(n)
    except UnsupportedHadamardSize:
        return False
    return True


def hadamard_matrix(n: int, signs=None, *, normalized: bool = True) -> np.ndarray:
    """Dense ``R = diag(s) · (H_b ⊗ H_{2^k}) [/ sqrt(n)]`` as float64 numpy (tests / small n only)."""
    b, p = hadamard_factors(n)
    h2 = np.array([[1.0]])
    while h2.shape[0] < p:
        h2 = np.block([[h2, h2], [h2, -h2]])
    h = np.kron(base_hadamard(b).astype(np.float64), h2)
    if normalized:
        h = h / math.sqrt(n)
    if signs is not None:
        h = np.asarray(signs, np.float64)[:, None] * h
    return h


def random_signs(key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
    """Random ±1 vector of length ``n`` (the diagonal ``s`` of the randomized Hadamard ``R``)."""
    hadamard_factors(n)  # validate early
    return jnp.where(jax.random.bernoulli(key, 0.5, (n,)), 1.0, -1.0).astype(dtype)


def hadamard_transform(
    x: jax.Array, signs: jax.Array | None = None, *, inverse: bool = False, method: str = "butterfly"
) -> jax.Array:
    """Fast ``x · R`` (or ``x · Rᵀ`` with ``inverse=True``) over the last axis; float32 math.

    ``R = diag(signs) · H_n / sqrt(n)`` (``signs=None`` → all +1). Returns ``x.dtype`` for floating
    inputs (float32 for integer inputs). ``method``: ``"butterfly"`` (``log2 p`` Walsh–Hadamard
    stages + the ``b × b`` base matmul; fewest flops, the default) or ``"kron"`` (the same matrix as
    one einsum with the two small factors on the ``(b, p)`` view, ``O(n (b + p))`` flops, fewer
    passes over memory; XLA runs each butterfly stage as its own memory-bound kernel). Both compute
    the same ``R`` (tested). Measured on an H200 (jax 0.11.2, x (8192, K) bf16 → f32): K=1152
    butterfly 0.20 ms / kron 0.12 ms; K=4608 0.89 / 0.60 ms (a copy of x: 0.04 / 0.09 ms) — the
    online rotation belongs in a fused producer kernel for speed.
    """
    if method not in ("butterfly", "kron"):
        raise ValueError(f"method={method!r} unknown; choose 'butterfly' or 'kron'")
    x = jnp.asarray(x)
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    n = x.shape[-1]
    b, p = hadamard_factors(n)
    xf = x.astype(jnp.float32)
    if signs is not None:
        signs = jnp.asarray(signs, jnp.float32)
        if signs.shape != (n,):
            raise ValueError(f"signs must have shape ({n},), got {signs.shape}")
    if signs is not None and not inverse:
        xf = xf * signs
    lead = xf.shape[:-1]
    y = xf.reshape(lead + (b, p))
    hi = jax.lax.Precision.HIGHEST
    # forward: y[jb, jp] = Σ x[ib, ip] H_b[ib, jb] H_p[ip, jp];  inverse uses H_bᵀ (H_p is symmetric).
    hb = jnp.asarray(base_hadamard(b), jnp.float32)
    hb = hb.T if inverse else hb
    if method == "kron":
        y = jnp.einsum("...ip,ij,pq->...jq", y, hb, jnp.asarray(sylvester(p)), precision=hi)
    else:
        if p > 1:
            y = fwht(y)
        if b > 1:
            y = jnp.einsum("...ip,ij->...jp", y, hb, precision=hi)
    y = y.reshape(lead + (n,)) * jnp.float32(1.0 / math.sqrt(n))
    if signs is not None and inverse:
        y = y * signs
    return y.astype(out_dtype)


__all__ = [
    "UnsupportedHadamardSize",
    "base_hadamard",
    "hadamard_factors",
    "hadamard_matrix",
    "hadamard_transform",
    "is_supported",
    "random_signs",
]

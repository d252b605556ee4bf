"""Randomized Hadamard: exact orthogonality, fast transform == dense matrix, unsupported sizes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant.hadamard import (
    UnsupportedHadamardSize,
    base_hadamard,
    hadamard_factors,
    hadamard_matrix,
    hadamard_transform,
    is_supported,
    random_signs,
)

MODEL_SIZES = [16, 72, 256, 1152, 2304, 3456, 4096, 4608]  # patch, head dim, freq, hidden, ..., T5, mlp
OTHER_SIZES = [1, 2, 4, 8, 12, 20, 24, 28, 36, 40, 108, 384, 3072]
DENSE_MAX = 1200  # full dense comparison up to this size (bigger ones: exact Kronecker factors + rows)

# one XLA compile per size instead of one per eager op (the butterflies are many small ops)
_fast = jax.jit(hadamard_transform, static_argnames="inverse")


def test_expected_factorizations():
    assert hadamard_factors(1152) == (36, 32)
    assert hadamard_factors(4608) == (36, 128)
    assert hadamard_factors(2304) == (36, 64)
    assert hadamard_factors(72) == (36, 2)
    assert hadamard_factors(3456) == (108, 32)
    assert hadamard_factors(4096) == (1, 4096)


@pytest.mark.parametrize("order", [2, 12, 20, 28, 36, 44, 60, 108])
def test_base_matrices_exactly_orthogonal(order):
    h = base_hadamard(order).astype(np.int64)
    assert set(np.unique(h)) <= {-1, 1}
    np.testing.assert_array_equal(h @ h.T, order * np.eye(order, dtype=np.int64))


def _sylvester_row(i: int, p: int) -> np.ndarray:
    # H_p[i, j] = (-1)^popcount(i & j)  (independent of the butterfly implementation)
    v = i & np.arange(p)
    parity = np.zeros(p, np.int64)
    while np.any(v):
        parity ^= v & 1
        v = v >> 1
    return np.where(parity == 0, 1.0, -1.0)


@pytest.mark.parametrize("n", MODEL_SIZES + OTHER_SIZES)
def test_fast_transform_equals_dense(n):
    rng = np.random.default_rng(n)
    sn = rng.choice([-1.0, 1.0], n)
    s = jnp.asarray(sn, jnp.float32)
    b, p = hadamard_factors(n)
    hb = base_hadamard(b).astype(np.float64)
    # exact orthogonality of the unnormalised integer matrix (Kronecker of exact factors)
    hp_int = np.stack([_sylvester_row(i, p) for i in range(min(p, 64))]) if p <= 64 else None
    if hp_int is not None:
        np.testing.assert_array_equal(hp_int @ hp_int.T, p * np.eye(p))
    idx = np.unique(np.array([0, 1, n // 2, n - 1]) % n)
    x = rng.standard_normal((3 + len(idx), n)).astype(np.float32)
    x[3:] = 0.0
    x[3 + np.arange(len(idx)), idx] = 1.0  # basis vectors: their images are rows of R
    y = np.asarray(_fast(x, s))
    if n <= DENSE_MAX:
        r = hadamard_matrix(n, sn)
        np.testing.assert_allclose(r @ r.T, np.eye(n), atol=1e-12)
        hn = hadamard_matrix(n, normalized=False)
        np.testing.assert_array_equal(hn @ hn.T, n * np.eye(n))
        np.testing.assert_allclose(y, x.astype(np.float64) @ r, rtol=0, atol=2e-5 * np.abs(x).max())
    # any size: rows of R from an independent construction (Kronecker of exact factors)
    for r_i, i in zip(y[3:], idx):
        expect = sn[i] * np.kron(hb[i // p], _sylvester_row(int(i) % p, p)) / math.sqrt(n)
        np.testing.assert_allclose(r_i, expect, atol=1e-6)
    # orthogonality through the fast path: norms preserved, inverse round trip
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    back = np.asarray(_fast(y, s, inverse=True))
    np.testing.assert_allclose(back, x, atol=1e-5 * max(1.0, np.abs(x).max()))
    if n in (72, 1152, 4096):  # the Kronecker-matmul form computes the same matrix
        yk = np.asarray(jax.jit(lambda v, g: hadamard_transform(v, g, method="kron"))(x, s))
        np.testing.assert_allclose(yk, y, atol=2e-5 * np.abs(x).max())


def test_random_signs():
    s = np.asarray(random_signs(jax.random.key(0), 1152))
    assert s.shape == (1152,) and s.dtype == np.float32
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s, np.asarray(random_signs(jax.random.key(0), 1152)))
    with pytest.raises(UnsupportedHadamardSize):
        random_signs(jax.random.key(0), 27)


def test_transform_keeps_dtype_and_leading_dims():
    x = jnp.ones((2, 3, 72), jnp.bfloat16)
    y = hadamard_transform(x)
    assert y.shape == x.shape and y.dtype == jnp.bfloat16
    y32 = jax.jit(hadamard_transform)(x.astype(jnp.float32), jnp.ones((72,)))
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=1e-2)


@pytest.mark.parametrize("n", [3, 9, 27, 6, 18, 54, 0, -4])
def test_unsupported_sizes_raise(n):
    assert not is_supported(n)
    with pytest.raises(UnsupportedHadamardSize):
        hadamard_factors(n)
    if n == 27:
        with pytest.raises(UnsupportedHadamardSize, match="no Hadamard matrix of order 27"):
            hadamard_factors(27)


def test_bad_arguments():
    with pytest.raises(ValueError, match="signs"):
        hadamard_transform(jnp.ones((2, 8)), jnp.ones((4,)))
    with pytest.raises(ValueError, match="method"):
        hadamard_transform(jnp.ones((2, 8)), method="dense")

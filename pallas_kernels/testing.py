"""Helpers shared by the kernel tests and the GPU check (fresh random inputs, GPU skip marker)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ON_GPU = jax.devices()[0].platform == "gpu"

try:  # pytest is only needed by the test-suite marker
    import pytest

    requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
except ImportError:  # pragma: no cover
    requires_gpu = None


def rand_x(seed: int, m: int, k: int, dtype=jnp.bfloat16, zero_row: int | None = None) -> jax.Array:
    x = (jax.random.normal(jax.random.key(seed), (m, k), jnp.float32) * 3.0).astype(dtype)
    if zero_row is not None and m > zero_row:
        x = x.at[zero_row].set(0)
    return x


def rand_int(seed: int, shape: tuple[int, ...], lo: int, hi: int) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, lo, hi + 1, jnp.int8)


def rand_scale(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, 1e-3, 1e-2)


def assert_bf16_close(y: jax.Array, ref: jax.Array) -> None:
    y = np.asarray(y, np.float32)
    r = np.asarray(ref, np.float32)
    assert np.all(np.isfinite(y))
    scale = max(float(np.abs(r).max()), 1e-6)
    np.testing.assert_allclose(y, r, rtol=1e-2, atol=1e-2 * scale)

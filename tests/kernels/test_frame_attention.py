"""Attention across frames: the Pallas-Triton kernel (interpret mode on CPU) vs its reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels.ops.frame_attention import head_chunks, triton_frame_attention
from pallas_kernels.testing import requires_gpu


def _qkv(seed, shape, dtype=jnp.bfloat16):
    return tuple(jax.random.normal(k, shape, jnp.float32).astype(dtype) * 2
                 for k in jax.random.split(jax.random.PRNGKey(seed), 3))


def test_head_chunks_cover_each_lane_once():
    for d in (16, 24, 64, 72, 96, 128, 144):
        covered = np.zeros(d, int)
        for off, width, first in head_chunks(d):
            assert width & (width - 1) == 0 and width >= 16 and off >= 0 and off + width <= d
            covered[off + first: off + width] += 1
        assert (covered == 1).all(), d
    with pytest.raises(ValueError, match="head width"):
        head_chunks(8)


@pytest.mark.parametrize("shape", [(2, 16, 8, 3, 72), (1, 15, 4, 2, 64), (1, 5, 6, 2, 24)])
def test_kernel_interpret_matches_reference(shape):
    seed = sum(shape)
    q, k, v = _qkv(seed, shape)
    out = triton_frame_attention(q, k, v, interpret=True)
    assert out.shape == shape and out.dtype == jnp.bfloat16
    exact = pk.frame_attention_ref(*(a.astype(jnp.float32) for a in (q, k, v)))
    ref = pk.frame_attention_ref(q, k, v)
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - exact)))
    ref_err = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - exact)))
    assert err <= 1.5 * ref_err + 1e-3, (err, ref_err)  # as close to exact as the bf16 reference


def test_reference_is_sequence_attention_across_frames():
    from models.attention import reference_attention as attention

    b, t, s, h, d = 2, 5, 6, 3, 16
    q, k, v = _qkv(3, (b, t, s, h, d), jnp.float32)
    seq = lambda a: a.transpose(0, 2, 1, 3, 4).reshape(b * s, t, h, d)  # noqa: E731
    ref = attention(seq(q), seq(k), seq(v)).reshape(b, s, t, h, d).transpose(0, 2, 1, 3, 4)
    np.testing.assert_allclose(np.asarray(pk.frame_attention_ref(q, k, v)), np.asarray(ref), atol=1e-5)


def test_dispatch_keeps_float32_on_the_reference_and_checks_shapes():
    q, k, v = _qkv(1, (1, 4, 2, 2, 16), jnp.float32)
    np.testing.assert_array_equal(np.asarray(pk.frame_attention(q, k, v)),
                                  np.asarray(pk.frame_attention_ref(q, k, v)))
    with pytest.raises(ValueError, match="share one"):
        pk.frame_attention_ref(q, k[:, :3], v)
    with pytest.raises(ValueError, match="backend"):
        pk.frame_attention(q, k, v, backend="cuda")


@requires_gpu
def test_kernel_on_gpu_matches_reference():
    q, k, v = _qkv(7, (2, 16, 256, 16, 72))
    out = pk.frame_attention(q, k, v)
    ref = pk.frame_attention_ref(q, k, v).astype(jnp.float32)
    rel = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 5e-3

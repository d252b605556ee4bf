"""Sequence-parallel attention (vidq_jax/sharding/attention.py) against the unsharded references on
fresh random inputs: every kind and path (Ulysses over image tokens and over flat video tokens,
frame-local, ring, position-sharded temporal, cross), uneven token counts, key masks, per-layer records,
and Dense records run per shard (records.py: quantized, and float kernels of params split along N)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from models import attention as seam
from vidq_jax import sharding
from vidq_jax.sharding.attention import Layout

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: tests/conftest.py")


def _qkv(shape, seed, kv_shape=None):
    rng = np.random.default_rng(seed)
    kv_shape = shape if kv_shape is None else kv_shape
    return tuple(rng.standard_normal(s).astype(np.float32) for s in (shape, kv_shape, kv_shape))


def _mask(rows, n, seed):
    m = np.random.default_rng(seed).random((rows, n)) < 0.7
    m[:, 0] = True  # every row keeps a valid key
    return m


def _np_attention(q, k, v, mask=None):
    """float64 numpy softmax attention, ``(B, N, H, D)`` layout (what the seam's reference computes)."""
    logits = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), v)


def _np_frames(q, k, v):
    """Temporal attention ``(B, T, S, H, D)``: every position over its frames."""
    b, t, s, h, d = q.shape
    seq = lambda a: a.transpose(0, 2, 1, 3, 4).reshape(b * s, t, h, d)  # noqa: E731
    return _np_attention(seq(q), seq(k), seq(v)).reshape(b, s, t, h, d).transpose(0, 2, 1, 3, 4)


def _run(kind, layout, q, k, v, mask=None):
    """(sharded output with the seam's implementation per shard, numpy reference)."""
    fn = sharding.attention.implementation(kind, layout, seam.implementation(kind))
    if kind == "temporal":
        return jax.jit(lambda q, k, v: fn(q, k, v))(q, k, v), _np_frames(q, k, v)
    return jax.jit(fn)(q, k, v, mask), _np_attention(q, k, v, mask)


# (mesh, strategy, rows, q shape (B', S, H, D)): Ulysses over 15 image tokens on seq=4 (padding), frame-local
# (4 frames on seq=4), flat Ulysses over 3 frames × 5 tokens, ring with 2 heads (images and frames)
SELF_CASES = {
    "ulysses-uneven": ("data=2,seq=4", "ulysses", 2, (2, 15, 4, 8)),
    "frame-local": ("data=2,seq=4", "ulysses", 2, (8, 6, 2, 8)),
    "ulysses-video-flat": ("data=2,seq=4", "ulysses", 2, (6, 5, 4, 8)),
    "ring-uneven": ("data=2,seq=4", "ring", 2, (2, 15, 2, 8)),
    "ring-video": ("data=1,seq=8", "ring", 2, (6, 5, 2, 8)),
    "seq-only": ("data=1,seq=8", "ulysses", 2, (2, 16, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(SELF_CASES))
def test_shard_self_attention(case):
    mesh, strategy, rows, shape = SELF_CASES[case]
    layout = Layout(sharding.as_mesh(mesh), rows, strategy)
    q, k, v = _qkv(shape, 1)
    out, ref = _run("self", layout, q, k, v, _mask(shape[0], shape[1], 2))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("heads,strategy", [(4, "ulysses"), (2, "ulysses"), (4, "ring")])
def test_shard_temporal_attention(heads, strategy):
    """Ulysses over the flat frame-major tokens (3 frames × 5 positions on seq=4), or positions on seq."""
    layout = Layout(sharding.as_mesh("data=2,seq=4"), 2, strategy)
    q, k, v = _qkv((2, 3, 5, heads, 8), 3)
    out, ref = _run("temporal", layout, q, k, v)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


def test_shard_cross_attention():
    layout = Layout(sharding.as_mesh("data=2,seq=4"), 2)
    q, k, v = _qkv((2, 15, 4, 8), 4, kv_shape=(2, 7, 4, 8))
    out, ref = _run("cross", layout, q, k, v, _mask(2, 7, 5))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


def test_shard_ulysses_heads_error():
    layout = Layout(sharding.as_mesh("data=2,seq=4"), 2)
    q, k, v = _qkv((2, 16, 2, 8), 6)
    with pytest.raises(sharding.MeshError, match=r"2 attention heads over seq=4: choose seq in \[1, 2\]"):
        _run("self", layout, q, k, v)


@struct.dataclass
class _ScaledAttention:
    """A per-layer attention record with an array leaf (it must travel into the shard_map)."""

    gain: jax.Array

    def attend(self, q, k, v, key_mask=None, *, kind):
        return self.gain * seam.reference_attention(q, k, v, key_mask)


def test_shard_attention_record_runs_per_shard():
    layout = Layout(sharding.as_mesh("data=2,seq=4"), 2)
    rec = _ScaledAttention(jnp.float32(1.5))
    params = sharding.shard_records({"attn": {seam.RECORD_KEY: rec}}, layout)
    wrapped = params["attn"][seam.RECORD_KEY]
    assert isinstance(wrapped, sharding.ShardedAttentionRecord)
    q, k, v = _qkv((2, 12, 4, 8), 7)
    out = jax.jit(lambda r, q, k, v: r.attend(q, k, v, kind="self"))(wrapped, q, k, v)
    np.testing.assert_allclose(out, 1.5 * _np_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_shard_quantized_dense_record():
    """A W8A8 record (xla backend) per shard: per-token activation quantization gives the same rows."""
    from vidq_jax.quant import LayerQuant
    from vidq_jax.quant.record import quantize_weight

    rng = np.random.default_rng(8)
    rec = quantize_weight(rng.standard_normal((32, 48)).astype(np.float32),
                          LayerQuant(w_bits=8, w_symmetric=True, a_bits=8, backend="xla"))
    layout = Layout(sharding.as_mesh("data=2,seq=4"), 2)
    wrapped = sharding.shard_records({"kernel": rec}, layout)["kernel"]
    x = rng.standard_normal((2, 12, 32)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    run = jax.jit(lambda r, x, b: r.quantized_dense(x, b, jnp.float32, activation="gelu_tanh", splits=3))
    for got, want in zip(run(wrapped, x, bias), run(rec, x, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shard_float_dense_of_n_split_params():
    """With params split along N, float kernels run as FloatDense records per shard: as Dense computes."""
    from models.layers import Dense

    rng = np.random.default_rng(11)
    dense = Dense(48, splits=2, activation="gelu_tanh")
    x = rng.standard_normal((2, 12, 32)).astype(np.float32)
    params = Dense(48).init(jax.random.PRNGKey(0), x)["params"]
    mesh = sharding.as_mesh("data=2,seq=4")
    layout = Layout(mesh, 2)
    placed = sharding.place_params(params, mesh, "shard")
    run = jax.jit(lambda p, x: dense.apply({"params": p}, x))
    wrapped = jax.jit(lambda p, x: dense.apply({"params": sharding.shard_records(p, layout, "shard")}, x))
    assert isinstance(sharding.shard_records(params, layout, "shard")["kernel"].record, sharding.FloatDense)
    for got, want in zip(wrapped(placed, x), run(params, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_shard_activate_nests_and_restores():
    """activate() blocks nest (the innermost layout holds) and leave the seam as they found it."""
    mesh = sharding.as_mesh("data=2,seq=4")
    before = {kind: seam.implementation(kind) for kind in seam.KINDS}
    with sharding.activate(mesh) as outer:
        with sharding.activate(mesh, rows=2, strategy="ring") as inner:
            assert seam.implementation("self").layout == inner == sharding.active_layout()
        assert seam.implementation("temporal").layout == outer
    assert {kind: seam.implementation(kind) for kind in seam.KINDS} == before
    assert sharding.active_layout() is None

"""Shared layers: attention paths, masking, RoPE, the Dense quantization seam, patchify round trip."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.attention import reference_attention as attention
from models.attention import reference_frame_attention as frame_attention
from models.layers import (
    Dense,
    PatchEmbed,
    apply_rope,
    dense_input,
    key_padding_mask,
    layer_norm,
    modulate,
    unpatchify,
)


def _qkv(seed, b=2, n=10, h=4, d=16):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (b, n, h, d)) for k in ks]


def test_half_precision_attention_matches_float32():
    q, k, v = _qkv(0)
    mask = jnp.array([[1] * 6 + [0] * 4, [1] * 10], bool)
    ref = attention(q, k, v, mask)
    half = attention(*(t.astype(jnp.bfloat16) for t in (q, k, v)), mask)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(ref), atol=3e-2)


def test_padding_has_no_influence():
    q, k, v = _qkv(1)
    mask = jnp.array([[1] * 6 + [0] * 4, [1] * 3 + [0] * 7], bool)
    out = attention(q, k, v, mask)
    k2 = k.at[:, 6:].set(100.0).at[1, 3:].set(-50.0)
    v2 = v.at[:, 6:].set(7.0).at[1, 3:].set(3.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(attention(q, k2, v2, mask)))


def test_mask_rows_tile_for_cfg():
    m = key_padding_mask(np.array([[1, 1, 0], [1, 0, 0]]), 4, 3)
    assert m.shape == (4, 3) and bool(m[2, 1]) and not bool(m[3, 1])
    with pytest.raises(ValueError, match="does not divide"):
        key_padding_mask(np.ones((3, 3)), 4, 3)


def test_rope_is_a_rotation_of_pairs():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 5, 2, 8))
    y = apply_rope(x, jnp.arange(5))
    np.testing.assert_allclose(np.asarray(y[:, 0]), np.asarray(x[:, 0]), atol=1e-6)  # position 0 unchanged
    pn = lambda t: np.linalg.norm(np.asarray(t).reshape(1, 5, 2, 4, 2), axis=-1)
    np.testing.assert_allclose(pn(y), pn(x), rtol=1e-5)  # each (2k, 2k+1) pair keeps its norm


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_frame_attention_is_sequence_attention_across_frames(dtype):
    """Frame-major (B, T, S, H, D) attention over T == per-position sequences (B·S, T, H, D)."""
    b, t, s, h, d = 2, 5, 6, 3, 8
    q, k, v = (jax.random.normal(kk, (b, t, s, h, d)).astype(dtype)
               for kk in jax.random.split(jax.random.PRNGKey(4), 3))
    seq = lambda a: a.transpose(0, 2, 1, 3, 4).reshape(b * s, t, h, d)  # noqa: E731
    ref = attention(*(seq(a).astype(jnp.float32) for a in (q, k, v)))
    ref = ref.reshape(b, s, t, h, d).transpose(0, 2, 1, 3, 4)
    out = frame_attention(q, k, v)
    assert out.shape == (b, t, s, h, d) and out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=tol, rtol=tol)


def test_rope_rotates_along_axis_1_of_frame_major_tokens():
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 3, 2, 8))  # (B, T, S, H, D)
    y = apply_rope(x, jnp.arange(4))
    seq = lambda a: a.transpose(0, 2, 1, 3, 4).reshape(6, 4, 2, 8)  # noqa: E731
    np.testing.assert_allclose(np.asarray(seq(y)), np.asarray(apply_rope(seq(x), jnp.arange(4))), atol=1e-6)


def test_dense_splits_float_and_quantized_paths():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 5, 8))
    dense = Dense(12, splits=3)
    params = dense.init(jax.random.PRNGKey(0), x)
    q, k, v = dense.apply(params, x)
    full = Dense(12).apply(params, x)
    for part, ref in zip((q, k, v), jnp.split(full, 3, axis=-1)):
        np.testing.assert_array_equal(np.asarray(part), np.asarray(ref))
    with pytest.raises(ValueError, match="do not split"):
        Dense(10, splits=3).init(jax.random.PRNGKey(0), x)

    @flax.struct.dataclass
    class SplittingRecord:
        w: jax.Array  # (N, K)

        def quantized_dense(self, x, bias, dtype, splits=1):
            y = (x @ self.w.T + bias).astype(dtype)
            return tuple(jnp.split(y, splits, -1)) if splits > 1 else y

    w = params["params"]["kernel"].T
    for rec in (SplittingRecord(w), _FakeRecord(w)):  # record splits itself / Dense splits for it
        out = dense.apply({"params": {"kernel": rec, "bias": params["params"]["bias"]}}, x)
        assert isinstance(out, tuple) and len(out) == 3 and out[0].shape == (2, 5, 4)
        if isinstance(rec, SplittingRecord):
            np.testing.assert_allclose(np.asarray(jnp.concatenate(out, -1)), np.asarray(full), rtol=1e-5, atol=1e-5)


@flax.struct.dataclass
class _FakeRecord:
    w: jax.Array  # (N, K)

    def quantized_dense(self, x, bias, dtype):
        return (x @ self.w.T + bias).astype(dtype) * 0 + 42.0


def test_dense_seam_dispatches_to_record():
    dense = Dense(3)
    x = jnp.ones((2, 4))
    params = dense.init(jax.random.PRNGKey(0), x)["params"]
    y = dense.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ params["kernel"] + params["bias"]), rtol=1e-6)
    qparams = {"kernel": _FakeRecord(params["kernel"].T), "bias": params["bias"]}
    assert np.all(np.asarray(jax.jit(lambda p: dense.apply({"params": p}, x))(qparams)) == 42.0)


@flax.struct.dataclass
class _InputRecord:
    """Returns the input it is handed (raw ``x`` when it takes ``prenorm=``, which it then notes as -x)."""

    w: jax.Array

    def quantized_dense(self, x, bias, dtype, prenorm=None):
        return x if prenorm is None else -x


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_prenorm_is_modulate_of_layer_norm(dtype):
    """``Dense(x, prenorm=(shift, scale))`` == ``Dense(modulate(layer_norm(x), shift, scale))`` bit for bit
    (jitted, as models run), for a block's ``(B, 1, C)`` adaLN parameters and per-frame ``(B, T, 1, C)``
    ones on frame-major tokens; records that take ``prenorm`` get the raw ``x``, others the normed input."""
    b, t, s, c = 2, 3, 4, 8
    ks = jax.random.split(jax.random.key(7), 5)
    x = (3 * jax.random.normal(ks[0], (b, t * s, c)) + 1).astype(dtype)
    dense = Dense(6)
    params = dense.init(ks[1], x)
    cases = {"block": (b, 1, c), "per-frame": (b, t, 1, c)}
    for shape in cases.values():
        shift, scale = (jax.random.normal(k, shape).astype(dtype) for k in ks[2:4])
        frames = x.reshape(b, -1, s, c) if len(shape) == 4 else x
        h = lambda x: modulate(layer_norm(x.reshape(frames.shape)), shift, scale).reshape(x.shape)  # noqa: E731
        # prenorm vs the blocks' expression, one jit as before (also what an interceptor sees)
        y, y_h, seen, want = jax.jit(lambda p, x: (dense.apply(p, x, prenorm=(shift, scale)), dense.apply(p, h(x)),
                                                   dense_input((x,), {"prenorm": (shift, scale)}), h(x)))(params, x)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_h))
        np.testing.assert_array_equal(np.asarray(seen), np.asarray(want))
        assert y.dtype == y_h.dtype
        echo = {"params": {"kernel": _InputRecord(params["params"]["kernel"]), "bias": params["params"]["bias"]}}
        np.testing.assert_array_equal(np.asarray(dense.apply(echo, x, prenorm=(shift, scale))), -np.asarray(x))
        plain = {"params": {"kernel": _FakeRecord(params["params"]["kernel"].T), "bias": params["params"]["bias"]}}
        assert np.all(np.asarray(dense.apply(plain, x, prenorm=(shift, scale))) == 42.0)
    with pytest.raises(ValueError, match=r"prenorm shift \(2, 5\).*G\*8"):
        dense.apply(params, x, prenorm=(jnp.ones((2, 5)), jnp.ones((2, 5))))


@pytest.mark.parametrize("patch,shape", [((2, 2), (2, 8, 12, 3)), ((1, 2, 2), (1, 3, 4, 6, 5))])
def test_unpatchify_inverts_patch_layout(patch, shape):
    x = jax.random.normal(jax.random.PRNGKey(3), shape)
    grid = tuple(s // p for s, p in zip(shape[1:-1], patch))
    c = shape[-1]
    # tokens whose features are the raw patch pixels ordered (*patch, C)
    nd = len(patch)
    t = x.reshape(shape[0], *[a for g, p in zip(grid, patch) for a in (g, p)], c)
    perm = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    tokens = t.transpose(perm).reshape(shape[0], int(np.prod(grid)), -1)
    np.testing.assert_array_equal(np.asarray(unpatchify(tokens, grid, patch, c)), np.asarray(x))


def test_patch_embed_pads_non_multiples():
    pe = PatchEmbed(8, (1, 2, 2))
    x = jnp.ones((1, 2, 5, 7, 4))
    params = pe.init(jax.random.PRNGKey(0), x)
    tokens, grid = pe.apply(params, x)
    assert grid == (2, 3, 4) and tokens.shape == (1, 24, 8)

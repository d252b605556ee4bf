"""T5 v1.1 encoder (models/t5.py): buckets against the original formula, mask semantics, bf16, config."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.t5 import T5Config, T5Encoder, relative_position_buckets

TINY = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


def _original_buckets(rel, num_buckets, max_distance):
    """The original bidirectional bucket formula, in torch float32 (transcribed, not imported)."""
    import torch

    half = num_buckets // 2
    out = (rel > 0).to(torch.long) * half
    r = torch.abs(rel)
    exact = half // 2
    large = exact + (torch.log(r.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    return out + torch.where(r < exact, r, large)


def test_buckets_match_the_original_float32_formula():
    torch = pytest.importorskip("torch")
    n = 320  # PixArt-Σ's 300 tokens: past max_distance, the log/trunc boundaries at 16, 32, 64 included
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    for num_buckets, max_distance in ((32, 128), (64, 512)):
        ref = _original_buckets(rel, num_buckets, max_distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(n, n, num_buckets, max_distance), ref)


def test_buckets_of_the_fixture_notes():
    b = relative_position_buckets(12, 12)[0]
    assert list(b) == [0, 17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24]
    assert list(relative_position_buckets(12, 12)[11][::-1]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8]


@pytest.fixture(scope="module")
def tiny():
    model = T5Encoder(TINY)
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), jnp.float32), abstract)
    ids = rng.integers(2, TINY.vocab_size, (2, 10)).astype(np.int32)
    mask = np.ones((2, 10), np.int32)
    ids[0, 6], mask[0, 7:], ids[0, 7:] = 1, 0, 0
    return model, params, ids, mask, jax.jit(model.apply)


def test_padding_keys_have_no_influence_but_padded_rows_are_computed(tiny):
    model, params, ids, mask, run = tiny
    out = np.asarray(run({"params": params}, ids, mask))
    assert out.shape == (2, 10, 32) and out.dtype == np.float32
    ids2 = ids.copy()
    ids2[0, 7:] = [5, 9, 11]
    out2 = np.asarray(run({"params": params}, ids2, mask))
    np.testing.assert_array_equal(out2[0, :7], out[0, :7])
    assert np.abs(out2[0, 7:] - out[0, 7:]).max() > 1e-3  # padded query rows follow their own ids
    np.testing.assert_array_equal(out2[1], out[1])
    unmasked = np.asarray(run({"params": params}, ids, np.ones_like(mask)))
    assert np.abs(unmasked[0, :7] - out[0, :7]).max() > 1e-4


def test_bf16_compute_is_close_to_float32(tiny):
    model, params, ids, mask, run = tiny
    ref = np.asarray(run({"params": params}, ids, mask))
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    out = np.asarray(jax.jit(model.clone(dtype=jnp.bfloat16).apply)({"params": half}, ids, mask))
    assert out.dtype == np.float32
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 3e-2


def test_every_linear_is_a_bias_free_dense(tiny):
    from vidq_jax.quant.tree import dense_paths

    model, params, *_ = tiny
    paths = dense_paths(params)
    assert len(paths) == 7 * TINY.num_layers
    assert "encoder/block_1/layer_1/DenseReluDense/wi_0" in paths
    assert all("bias" not in node for node in (params["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"],))
    assert "relative_attention_bias" in params["encoder"]["block_0"]["layer_0"]["SelfAttention"]
    assert "relative_attention_bias" not in params["encoder"]["block_1"]["layer_0"]["SelfAttention"]


def test_config_round_trip_and_errors(tiny):
    assert T5Config.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="feed_forward_proj='relu'.*allowed: gated-gelu"):
        T5Config(feed_forward_proj="relu")
    with pytest.raises(ValueError, match="unknown T5Config fields"):
        T5Config.from_dict({"d_model": 8, "foo": 1})
    with pytest.raises(ValueError, match="num_heads=0"):
        T5Config(num_heads=0)
    model, params, *_ = tiny
    with pytest.raises(ValueError, match="input_ids must be integer"):
        model.apply({"params": params}, jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model.apply({"params": params}, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 5), jnp.int32))

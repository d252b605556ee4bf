"""``xl_step.random_params``: the values one jit over the whole tree draws, from one compiled draw per
distinct leaf shape (not one RNG fusion per leaf: that made the XL build cost minutes of GPU time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import xl_step


def test_random_params_matches_one_jit_and_compiles_per_shape():
    sds = jax.ShapeDtypeStruct
    shapes = {"a": sds((6, 10), jnp.bfloat16), "b": {"c": sds((6, 10), jnp.bfloat16), "d": sds((7,), jnp.float32)},
              "e": sds((7,), jnp.bfloat16), "f": sds((2, 3, 6, 10), jnp.bfloat16)}
    key = jax.random.key(2, impl="rbg")

    @jax.jit
    def one_jit(k):  # what build() drew before: the reference values
        leaves, tree = jax.tree_util.tree_flatten(shapes)
        ks = jax.random.split(k, len(leaves))
        return jax.tree_util.tree_unflatten(tree, [(0.02 * jax.random.normal(kk, s.shape, jnp.float32))
                                                   .astype(jnp.bfloat16) for kk, s in zip(ks, leaves)])

    before = xl_step._draw._cache_size()
    got = xl_step.random_params(shapes, key)
    assert xl_step._draw._cache_size() - before <= 3  # distinct shapes, not leaves (5)
    ref = one_jit(key)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(shapes)
    leaves = jax.tree_util.tree_leaves
    for g, r, s in zip(leaves(got), leaves(ref), leaves(shapes)):
        assert g.shape == s.shape and g.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
    vals = [np.asarray(g, np.float32) for g in leaves(got)]
    assert len({v.tobytes() for v in vals}) == len(vals)  # independent draws
    assert 0.01 < np.concatenate([v.ravel() for v in vals]).std() < 0.03

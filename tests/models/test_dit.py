"""DiT (facebookresearch/DiT) model: positional table, null class, label/size checks, layer groups,
release configs. Golden parity runs in tests/conversion/test_parity.py (case facebook_dit_xl_style)."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.io import read_state_dict
from models.dit import DIT_PRESETS, DiT, DiTConfig, dit_pos_embed
from models.families import FAMILIES, family_of
from tests.fixture_models import fixture_case
from vidq_jax.quant.tree import dense_paths

TINY = DiTConfig(input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=4, num_classes=5)


@pytest.fixture(scope="module")
def tiny():
    model = DiT(TINY)  # 1 block: the cheapest compile
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs(2)))["params"]
    # random values everywhere (adaLN-Zero / the zero final layer of DiT's init would hide the conditioning)
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    rng = np.random.default_rng(0)
    return model, tree.unflatten([jnp.asarray(0.2 * rng.standard_normal(x.shape), jnp.float32) for x in leaves])


def _mae_reference(dim: int, grid: int) -> np.ndarray:
    """MAE/DiT get_2d_sincos_pos_embed written out: meshgrid(w, h), the first half from grid[0]."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def test_pos_embed_is_dits_table():
    np.testing.assert_allclose(dit_pos_embed(48, 4), _mae_reference(48, 4), atol=1e-12)
    np.testing.assert_allclose(dit_pos_embed(1152, 16), _mae_reference(1152, 16), atol=1e-12)
    case, _, _ = fixture_case("facebook_dit_xl_style")
    state, _, _ = read_state_dict(case.checkpoint)  # the table DiT's constructor stored
    np.testing.assert_allclose(dit_pos_embed(48, 4), state["pos_embed"][0], atol=1e-6)


def test_null_class_row_and_bad_labels(tiny):
    model, params = tiny
    x = jnp.asarray(np.tile(np.random.default_rng(2).standard_normal((4, 8, 8, 4), np.float32), (2, 1, 1, 1)))
    t = jnp.array([999, 500, 10, 0] * 2)
    apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
    both = apply(params, x, t, jnp.array([0, 4, 5, 5, 1, 4, 5, 6]))  # 5 = the null class
    out, other = both[:4], both[4:]
    assert out.shape == (4, 8, 8, 8) and out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    table = params["y_embedder"]["embedding_table"]["weight"]
    assert table.shape == (TINY.num_classes + 1, 32)
    # labels change the output; out of the table (6) = NaN for that row only, never a clamped class
    assert not np.allclose(out[0], other[0]) and np.allclose(out[1:3], other[1:3])
    assert bool(jnp.isnan(other[3]).all())
    with pytest.raises(ValueError, match=r"integer class labels \(null class 5\)"):
        model.apply({"params": params}, x, t, jnp.ones(8))
    with pytest.raises(ValueError, match=r"fixed-size model"):
        model.apply({"params": params}, jnp.zeros((1, 16, 16, 4)), t[:1], jnp.zeros(1, jnp.int32))


def test_release_configs():
    # (their parameter trees against the released key table: tests/conversion/test_dit.py)
    assert (DIT_PRESETS["dit-xl-2-256"].input_size, DIT_PRESETS["dit-xl-2-512"].input_size) == (32, 64)
    assert DIT_PRESETS["dit-xl-2-256"].grid == 16 and DIT_PRESETS["dit-xl-2-512"].out_channels == 8


def test_family_groups():
    model = DiT(dataclasses.replace(TINY, depth=2))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    fam = family_of(model)
    assert fam is FAMILIES["dit"] and fam.null_caption_of(model) == "null-class"
    assert (fam.sampler.name, fam.sampler.steps, fam.sampler.guidance_scale) == ("iddpm", 250, 4.0)
    paths = dense_paths(params)
    table = fam.group_table(paths)
    members = {g: sorted(p for p in paths if re.search(table[g], p)) for g in table}
    assert members["adaln"] == ["blocks_0/adaLN_modulation/1", "blocks_1/adaLN_modulation/1"]
    assert members["embedders"] == ["t_embedder/mlp_0", "t_embedder/mlp_2"]
    assert members["final"] == ["final_layer/adaLN_modulation/1", "final_layer/linear"]
    assert members["blocks"] == [f"blocks_{i}/{n}" for i in (0, 1) for n in ("attn/proj", "attn/qkv", "mlp/fc1",
                                                                                "mlp/fc2")]
    assert members["cross_attn"] == members["temporal_attn"] == members["cross_kv"] == []
    assert fam.block_order(paths) == ["blocks_0", "blocks_1"] and fam.edge_blocks(paths) == "^(blocks_0|blocks_1)/"
    assert fam.block_of("blocks_1/mlp/fc1") == "blocks_1" and fam.block_of("blocks_1/adaLN_modulation/1") == ""

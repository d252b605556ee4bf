"""DiT conversion: full-size key coverage of the released DiT-XL/2 files, config inference, and one error
naming every bad key. Parity on the fixture runs in test_parity.py."""

from __future__ import annotations

import shutil
import warnings

import jax
import numpy as np
import pytest

from conversion import ConversionError, ConversionWarning, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.fixtures import load_xl_keys, synthesize_state_dict
from conversion.io import read_state_dict
from models.dit import dit_pos_embed
from tests.fixture_models import fixture_case

CASE = "facebook_dit_xl_style"


def _convert(state, config=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, params = convert_state_dict(state, "dit", config)
    return model, params, [w.message for w in caught if issubclass(w.category, UserWarning)]


def test_xl_release_keys_convert_without_config_or_warning():
    """DiT-XL-2-256x256.pt (and the 512 file, which differs only in pos_embed) convert onto exactly the
    model's params tree, every value determined by the shapes."""
    listing = load_xl_keys("dit")
    state = synthesize_state_dict(listing)
    model, params, caught = _convert(state)
    assert not caught, [str(w) for w in caught]
    cfg = model.config
    assert (cfg.input_size, cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.num_classes) == (32, 1152, 28, 16, 1000)
    assert cfg.use_cfg_embedding and cfg.pred_sigma and cfg.mlp_ratio == 4.0 and cfg.patch_size == 2
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    assert shapes_of(params) == shapes_of(expected)
    n = sum(int(np.prod(s)) for s in shapes_of(params).values())
    assert n == listing["num_parameters"] - 256 * 1152  # everything but the recomputed pos_embed
    state["pos_embed"] = np.broadcast_to(np.float32(0), (1, 1024, 1152))  # DiT-XL-2-512x512.pt
    model, _, caught = _convert(state, listing["config"] | {"input_size": 64})  # its constructor arguments
    assert not caught and model.config == cfg.__class__(**{**cfg.to_dict(), "input_size": 64})


def test_fixture_without_config_names_each_assumption(tmp_path):
    """The tiny fixture without its manifest config: the head count (width 48 is no DiT model) and the
    class count (11 label rows: 10 + the null class?) are assumed in ONE warning; passing the manifest's
    values for just those gives the manifest's model."""
    case, ref_model, _ = fixture_case(CASE)
    shutil.copy(case.checkpoint, tmp_path / "model.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(tmp_path / "model.pt", "dit")
    notes = [w.message for w in caught if isinstance(w.message, ConversionWarning)]
    assert len(notes) == 1 and notes[0].assumed == {"num_heads": 3, "num_classes": 10}
    assert "\n" not in str(notes[0]) and "null class" in str(notes[0])
    manifest = case.manifest["config"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = load_checkpoint(tmp_path / "model.pt", "dit", {"num_heads": manifest["num_heads"],
                                                                   "num_classes": manifest["num_classes"]})
    assert model.config == ref_model.config  # whose output test_parity checks


def test_every_bad_key_is_named():
    case, _, _ = fixture_case(CASE)
    state, _, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    del state["blocks.1.adaLN_modulation.1.bias"]
    del state["y_embedder.embedding_table.weight"]
    state["blocks.0.attn.q_norm.weight"] = np.ones(12, np.float32)
    state["blocks.0.mlp.fc2.weight"] = np.zeros((48, 100), np.float32)
    state["pos_embed"] = np.zeros((1, 25, 48), np.float32)  # a 5 x 5 grid: input_size 10, not the config's 8
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "dit", case.manifest["config"])
    err = ei.value
    assert set(err.missing) == {"blocks.1.adaLN_modulation.1.bias", "y_embedder.embedding_table.weight"}
    assert err.unexpected == ["blocks.0.attn.q_norm.weight"]
    assert set(err.mismatched) == {("blocks.0.mlp.fc2.weight", (48, 100), (48, 192)),
                                   ("pos_embed", (1, 25, 48), (1, 16, 48))}
    # a model trained without label dropout has no null-class row: the table's shape says so
    state, _, _ = read_state_dict(case.checkpoint)
    with pytest.raises(ConversionError, match=r"y_embedder.embedding_table.weight: checkpoint \(11, 48\) vs "
                                              r"expected \(10, 48\)"):
        convert_state_dict(dict(state), "dit", case.manifest["config"] | {"class_dropout_prob": 0.0})


def test_pos_embed_evidence():
    """The stored table gives the input size; a table that is not DiT's is warned about, a missing one
    leaves the size to an assumption (said so)."""
    case, _, _ = fixture_case(CASE)
    state, _, _ = read_state_dict(case.checkpoint)
    config = {k: v for k, v in case.manifest["config"].items() if k != "input_size"}
    model, _, caught = _convert(dict(state), config)
    assert model.config.input_size == 8 and not caught
    odd = dict(state, pos_embed=(dit_pos_embed(48, 4) * 0.5)[None].astype(np.float32))
    _, _, caught = _convert(odd, config)
    assert len(caught) == 1 and "not DiT's fixed sin-cos table of a 4x4 grid" in str(caught[0])
    none = {k: v for k, v in state.items() if k != "pos_embed"}
    model, _, caught = _convert(none, config)
    assert model.config.input_size == 32 and [w.assumed for w in caught] == [{"input_size": 32}]

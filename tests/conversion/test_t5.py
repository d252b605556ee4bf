"""T5 encoder conversion: full-size key coverage (abstract), key variants, shards, bad-input errors."""

import json
import shutil

import jax
import numpy as np
import pytest

from conversion import ConversionError, ConversionWarning, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.fixtures import default_fixtures_dir, find_cases, load_xl_keys, synthesize_state_dict
from conversion.io import read_state_dict

FIX = default_fixtures_dir()
ARCH = "t5-encoder"


def _case():
    case = next((c for c in find_cases(FIX) if c.arch == ARCH), None)
    if case is None:
        pytest.skip(f"no {ARCH} fixture in {FIX}")
    return case


def _same_params(params, case, dtype=None):
    """``params`` equal those of the plain fixture folder (whose forward the parity test checks)."""
    _, ref = load_checkpoint(case.checkpoint, ARCH)
    flat, ref_flat = (jax.tree_util.tree_leaves_with_path(p) for p in (params, ref))
    assert [k for k, _ in flat] == [k for k, _ in ref_flat]
    for (k, a), (_, b) in zip(flat, ref_flat):
        b = np.asarray(b) if dtype is None else np.asarray(b).astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(a, np.float32), b, err_msg=str(k))


def test_xxl_key_coverage_without_materialising():
    """Every key of the released XXL encoder maps onto exactly the model's params (zero-copy views)."""
    listing = load_xl_keys(ARCH, FIX)
    state = synthesize_state_dict(listing)
    model, params = convert_state_dict(state, ARCH, listing["config"])
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    assert shapes_of(params) == shapes_of(expected)
    cfg = model.config
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (4096, 24, 64, 64, 10240)
    n = sum(int(np.prod(s)) for s in shapes_of(params).values())
    assert n == listing["num_parameters"]  # the tied encoder.embed_tokens is the same tensor as shared


def test_xxl_shapes_alone_determine_all_but_two_values():
    listing = load_xl_keys(ARCH, FIX)
    state = synthesize_state_dict(listing)
    del state["shared.weight"]  # only the tied name: used as the embedding
    with pytest.warns(ConversionWarning, match="relative_attention_max_distance, layer_norm_epsilon"):
        model, params = convert_state_dict(state, ARCH)
    assert model.config.vocab_size == 32128 and params["shared"]["weight"].shape == (32128, 4096)


def test_encoder_decoder_file_converts_with_the_decoder_ignored():
    case = _case()
    state, config, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    state["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((32, 32), np.float32)
    state["lm_head.weight"] = np.zeros((128, 32), np.float32)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    _, params = convert_state_dict(state, ARCH, config)
    _same_params(params, case)


def test_every_bad_key_is_named():
    case = _case()
    state, config, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    del state["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    state["encoder.block.0.layer.0.SelfAttention.qq.weight"] = np.zeros((2, 2), np.float32)
    state["encoder.final_layer_norm.weight"] = np.zeros((31,), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, ARCH, config)
    msg = str(e.value)
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1.weight" in msg
    assert "encoder.block.0.layer.0.SelfAttention.qq.weight" in msg
    assert "encoder.final_layer_norm.weight: checkpoint (31,) vs expected (32,)" in msg


def test_unsupported_settings_are_one_line_errors():
    case = _case()
    state, config, _ = read_state_dict(case.checkpoint)
    relu = {k.replace("wi_0", "wi"): v for k, v in state.items() if "wi_1" not in k}
    with pytest.raises(ConversionError, match="non-gated T5 FFN.*allowed: gated-gelu") as e:
        convert_state_dict(relu, ARCH, config)
    assert "\n" not in str(e.value)
    with pytest.raises(ConversionError, match="dense_act_fn='relu'.*allowed: 'gelu_new'"):
        convert_state_dict(dict(state), ARCH, {**config, "dense_act_fn": "relu"})
    with pytest.raises(ConversionError, match="feed_forward_proj='gated-silu'"):
        convert_state_dict(dict(state), ARCH, {**config, "feed_forward_proj": "gated-silu"})
    with pytest.raises(ConversionError, match="handles arch 't5-encoder'"):
        from conversion.t5 import convert

        convert(dict(state), "pixart-alpha", config, "x")


def _shard(folder, state, config, *, torch_bin=False):
    """``state`` written as two shards + index json next to config.json (the XXL release layout)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    names = [f"model-0000{i}-of-00002.{'bin' if torch_bin else 'safetensors'}" for i in (1, 2)]
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        tensors = {k: np.ascontiguousarray(state[k]) for k in part}
        if torch_bin:
            import torch

            torch.save({k: torch.tensor(v) for k, v in tensors.items()}, folder / names[i])
        else:
            from safetensors.numpy import save_file

            save_file(tensors, str(folder / names[i]))
        weight_map.update({k: names[i] for k in part})
    index = "pytorch_model.bin.index.json" if torch_bin else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / index


@pytest.mark.parametrize("torch_bin", [False, True], ids=["safetensors", "bin"])
def test_sharded_folder_with_index(tmp_path, torch_bin):
    pytest.importorskip("torch" if torch_bin else "safetensors")
    case = _case()
    state, config, _ = read_state_dict(case.checkpoint)
    index = _shard(tmp_path / "text_encoder", state, config, torch_bin=torch_bin)
    _same_params(load_checkpoint(tmp_path / "text_encoder", ARCH)[1], case)
    shard = sorted(set(json.loads(index.read_text())["weight_map"].values()))[1]
    (index.parent / shard).unlink()
    with pytest.raises(ConversionError, match=f"shard file\\(s\\) missing next to the index: {shard}"):
        load_checkpoint(tmp_path / "text_encoder", ARCH)


def test_bf16_weights_and_dtype_cast(tmp_path):
    pytest.importorskip("safetensors")
    import jax.numpy as jnp
    import ml_dtypes
    from safetensors.numpy import save_file

    case = _case()
    state, config, _ = read_state_dict(case.checkpoint)
    folder = tmp_path / "te"
    shutil.copytree(case.checkpoint, folder)
    save_file({k: np.asarray(v).astype(ml_dtypes.bfloat16) for k, v in state.items()}, str(folder / "model.safetensors"))
    _, params = load_checkpoint(folder, ARCH, dtype=jnp.float32)
    assert params["shared"]["weight"].dtype == jnp.float32
    _same_params(params, case, ml_dtypes.bfloat16)

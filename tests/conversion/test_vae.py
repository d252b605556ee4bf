"""conversion/vae.py: full-size key coverage of the SD / SDXL VAE and Open-Sora 1.2's video VAE (abstract shapes,
zero-copy stand-in weights), legacy attention names, and one-line / every-key errors on bad input."""

from __future__ import annotations

import shutil
import warnings

import jax
import numpy as np
import pytest

from conversion import ConversionError, ConversionWarning, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.fixtures import default_fixtures_dir, find_cases, load_xl_keys, synthesize_state_dict
from conversion.io import read_state_dict
from conversion.vae import rename_legacy_attention
from models.opensora_vae import SDXL_VAE, VAETemporalConfig

FIX = default_fixtures_dir()


def _case(name: str):
    case = next((c for c in find_cases(FIX) if c.name == name), None)
    if case is None:
        pytest.skip(f"no {name} fixture in {FIX}")
    return case


def _n(params) -> int:
    return sum(int(np.prod(s)) for s in shapes_of(params).values())


def _legacy(state: dict) -> dict:
    """The mid-block attention under the pre-refactor hub names (query/key/value/proj_attn)."""
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in state.items():
        for cur, old in new.items():
            if ".attentions.0." in k and f".{cur}." in k:
                k = k.replace(f".{cur}.", f".{old}.")
        out[k] = v
    return out


@pytest.mark.parametrize("name, scaling", [("sd-vae", 0.18215), ("sdxl-vae", 0.13025)])
def test_full_size_key_coverage(name, scaling):
    """Every key of the released VAE (current and legacy attention names) lands on exactly the params tree."""
    listing = load_xl_keys(name, FIX)
    state = synthesize_state_dict(listing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the release config leaves nothing to assume
        model, params = convert_state_dict(state, "sd-vae", listing["saved_config"])
    assert model.config.scaling_factor == scaling and model.config.norm_num_groups == 32
    assert model.config.block_out_channels == (128, 256, 512, 512) and model.config.downsample_factor == 8
    assert _n(params) == listing["num_parameters"]
    assert "to_out_0" in params["decoder"]["mid_block"]["attentions_0"]
    legacy = _legacy(state)
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    _, params2 = convert_state_dict(legacy, "sd-vae", listing["saved_config"])
    assert shapes_of(params2) == shapes_of(params)


def test_opensora_vae_full_size_key_coverage():
    listing = load_xl_keys("opensora-vae-v1.2", FIX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # release shapes: the SDXL VAE and VAE_Temporal_SD, nothing assumed
        model, params = convert_state_dict(synthesize_state_dict(listing), "opensora-vae-v1.2", listing["config"])
    assert _n(params) == listing["num_elements_in_state_dict"]  # parameters + the scale / shift buffers
    cfg = model.config
    assert cfg.spatial_vae == SDXL_VAE and cfg.temporal_vae == VAETemporalConfig()
    assert (cfg.micro_frame_size, cfg.micro_latent_frames, cfg.micro_batch_size) == (17, 5, 4)
    assert params["scale"].shape == (1, 4, 1, 1, 1)


def test_every_bad_key_is_named():
    case = _case("sd_vae_kl")
    state, config, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    del state["decoder.up_blocks.1.resnets.2.conv2.bias"]
    state["encoder.mid_block.attentions.0.extra.weight"] = np.zeros((3,), np.float32)
    state["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "sd-vae", config)
    err = ei.value
    assert err.missing == ["decoder.up_blocks.1.resnets.2.conv2.bias"]
    assert err.unexpected == ["encoder.mid_block.attentions.0.extra.weight"]
    assert err.mismatched == [("quant_conv.weight", (8, 8, 3, 3), (8, 8, 1, 1))]
    assert "arch sd-vae" in str(err).splitlines()[0]


def test_opensora_bad_keys_are_named_with_their_prefix():
    case = _case("opensora_v1_2_video_vae")
    state, config, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    del state["temporal_vae.decoder.conv_blocks.1.conv.bias"]
    del state["spatial_vae.module.decoder.conv_out.bias"]
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "opensora-vae-v1.2", {**config, **case.manifest["config"]},
                           source=str(case.checkpoint))
    assert sorted(ei.value.missing) == ["spatial_vae.module.decoder.conv_out.bias",
                                        "temporal_vae.decoder.conv_blocks.1.conv.bias"]


@pytest.mark.parametrize("bad, culprit", [
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D",
                           "DownEncoderBlock2D"]}, "down_block_types"),
    ({"act_fn": "gelu"}, "act_fn 'gelu'"),
])
def test_unsupported_structures_are_one_line_errors(bad, culprit):
    case = _case("sd_vae_kl")
    state, config, _ = read_state_dict(case.checkpoint)
    with pytest.raises(ConversionError, match=culprit) as ei:
        convert_state_dict(state, "sd-vae", {**config, **bad})
    assert len(str(ei.value).splitlines()) == 1


def test_folder_without_config_json_warns_what_it_assumes(tmp_path):
    """SD and SDXL VAEs share keys and shapes: without config.json the scaling factor, sample size and (for a
    non-release width) the group count are assumptions, named in one warning."""
    case = _case("sd_vae_kl")
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(case.checkpoint / "diffusion_pytorch_model.safetensors", folder)
    with pytest.warns(ConversionWarning) as record:
        model, _ = load_checkpoint(folder, "sd-vae")
    (w,) = [r.message for r in record if isinstance(r.message, ConversionWarning)]
    assert set(w.assumed) == {"norm_num_groups", "scaling_factor", "sample_size"}
    assert model.config.scaling_factor == 0.18215
    model, _ = load_checkpoint(folder, "sd-vae", {"norm_num_groups": 4, "scaling_factor": 0.13025,
                                                  "sample_size": 1024})
    assert model.config.scaling_factor == 0.13025 and model.config.default_tile == 128


def test_opensora_spatial_config_without_its_folder_is_an_assumption():
    case = _case("opensora_v1_2_video_vae")
    state, config, _ = read_state_dict(case.checkpoint)
    cfg = {k: v for k, v in config.items() if k != "vae_2d"}
    with pytest.warns(ConversionWarning, match="norm_num_groups"):
        convert_state_dict(state, "opensora-vae-v1.2", cfg)
    model, _ = convert_state_dict(state, "opensora-vae-v1.2", {**cfg, "spatial_vae": case.manifest["spatial_vae_config"]})
    assert model.config.spatial_vae.norm_num_groups == 4 and model.config.temporal_vae.num_groups == 2


def test_legacy_attention_names_only_touch_the_attention():
    state = {"decoder.mid_block.attentions.0.query.weight": 1, "encoder.mid_block.attentions.0.proj_attn.bias": 2,
             "decoder.up_blocks.0.resnets.0.conv1.weight": 3, "spatial_vae.module.decoder.mid_block.attentions.0.key.bias": 4}
    assert rename_legacy_attention(state) == {
        "decoder.mid_block.attentions.0.to_q.weight": 1, "encoder.mid_block.attentions.0.to_out.0.bias": 2,
        "decoder.up_blocks.0.resnets.0.conv1.weight": 3, "spatial_vae.module.decoder.mid_block.attentions.0.key.bias": 4}
    assert rename_legacy_attention(state, "spatial_vae.module.")[
        "spatial_vae.module.decoder.mid_block.attentions.0.to_k.bias"] == 4


def test_converted_param_count_matches_the_fixture():
    case = _case("sd_vae_kl")
    _, params = load_checkpoint(case.checkpoint, "sd-vae", case.manifest["config"])
    assert _n(params) == case.manifest["num_parameters"]
    assert jax.tree_util.tree_leaves(params)[0].dtype == np.float32


def test_converted_folder_loads_back(tmp_path):
    """``vidq convert --arch opensora-vae-v1.2`` writes a model folder that ``vidq_jax.load`` rebuilds (nested config)."""
    from vidq_jax.checkpoint import load_model, save_model

    case = _case("opensora_v1_2_video_vae")
    model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest["config"])
    save_model(tmp_path / "vae", model, params, arch=case.arch)
    model2, params2, meta = load_model(tmp_path / "vae")
    assert model2.config == model.config and meta["arch"] == case.arch
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                                         params, params2))

"""PixArt / diffusers conversion: full-size key coverage and bad-input errors."""

import json
import shutil
import sys

import jax
import numpy as np
import pytest

from conversion import ConversionError, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.fixtures import default_fixtures_dir, find_cases, load_xl_keys, synthesize_state_dict
from conversion.io import read_state_dict

FIX = default_fixtures_dir()
PIXART_ARCHS = ["pixart-alpha", "pixart-sigma", "pixart-diffusers"]


def _case(arch):
    for c in find_cases(FIX):
        if c.arch == arch:
            return c
    pytest.skip(f"no {arch} fixture in {FIX}")


@pytest.mark.parametrize("arch", PIXART_ARCHS)
def test_xl_key_coverage(arch):
    """Every key of the released XL checkpoint converts onto exactly the model's params tree."""
    listing = load_xl_keys(arch, FIX)
    state = synthesize_state_dict(listing)
    model, params = convert_state_dict(state, arch, listing.get("saved_config") or listing["config"])
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    assert shapes_of(params) == shapes_of(expected)
    assert model.config.hidden_size == 1152 and model.config.depth == 28 and model.config.num_heads == 16
    n = sum(int(np.prod(s)) for s in shapes_of(params).values())
    dropped = {"pixart-diffusers": 0}.get(arch, 1152 * 4096)  # pos_embed buffer dropped (α/Σ)
    assert n >= listing["num_parameters"] - dropped


def test_xl_alpha_config_resolved():
    listing = load_xl_keys("pixart-alpha", FIX)
    model, _ = convert_state_dict(synthesize_state_dict(listing), "pixart-alpha", listing["config"])
    cfg = model.config
    assert cfg.micro_condition and cfg.pe_interpolation == 2.0 and cfg.model_max_length == 120 and cfg.input_size == 128


def test_xl_sigma_inferred_without_config():
    listing = load_xl_keys("pixart-sigma", FIX)
    model, _ = convert_state_dict(synthesize_state_dict(listing), "pixart-sigma")
    cfg = model.config
    assert not cfg.micro_condition and cfg.model_max_length == 300 and cfg.pe_interpolation == 2.0
    assert cfg.null_caption == "empty-prompt"


def _small_state(arch="pixart-alpha"):
    case = _case(arch)
    state, _, _ = read_state_dict(case.checkpoint)
    return case, dict(state)


def test_every_bad_key_is_named():
    case, state = _small_state()
    del state["blocks.1.mlp.fc2.bias"]
    del state["t_block.1.weight"]
    state["blocks.0.attn.extra.weight"] = np.zeros((3, 3), np.float32)
    state["blocks.0.mlp.fc1.weight"] = np.zeros((7, 96), np.float32)
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "pixart-alpha", case.manifest["config"])
    err = ei.value
    assert set(err.missing) == {"blocks.1.mlp.fc2.bias", "t_block.1.weight"}
    assert err.unexpected == ["blocks.0.attn.extra.weight"]
    assert err.mismatched == [("blocks.0.mlp.fc1.weight", (7, 96), (384, 96))]
    msg = str(err)
    for k in ("blocks.1.mlp.fc2.bias", "t_block.1.weight", "blocks.0.attn.extra.weight", "(7, 96)", "(384, 96)"):
        assert k in msg


def test_wrong_arch_is_reported_not_keyerror():
    case, state = _small_state("pixart-alpha")
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "pixart-diffusers")
    assert ei.value.missing and ei.value.unexpected


def test_stored_pos_embed_is_accepted_and_dropped():
    case, state = _small_state()
    assert "pos_embed" in state
    _, params = convert_state_dict(state, "pixart-alpha", case.manifest["config"])
    assert "pos_embed" not in params


def test_diffusers_bad_keys_named_in_diffusers_space(tmp_path):
    case = _case("pixart-diffusers")
    state, cfg, _ = read_state_dict(case.checkpoint)
    state = dict(state)
    del state["transformer_blocks.0.attn1.to_k.weight"]
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "pixart-diffusers", cfg)
    assert ei.value.missing == ["transformer_blocks.0.attn1.to_k.weight"]


def test_truncated_pth(tmp_path):
    case = _case("pixart-alpha")
    data = case.checkpoint.read_bytes()
    bad = tmp_path / "model.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError) as ei:
        load_checkpoint(bad, "pixart-alpha")
    msg = str(ei.value)
    assert str(bad) in msg and "\n" not in msg


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint\n" * 10)
    with pytest.raises(ConversionError, match="notes.pth"):
        load_checkpoint(bad, "pixart-alpha")


def test_truncated_safetensors(tmp_path):
    case = _case("pixart-diffusers")
    src = case.checkpoint
    dst = tmp_path / "transformer"
    shutil.copytree(src, dst)
    f = dst / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ConversionError, match="truncated"):
        load_checkpoint(dst, "pixart-diffusers")


def test_missing_path_and_unknown_arch(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pth", "pixart-alpha")
    case = _case("pixart-alpha")
    with pytest.raises(ConversionError, match="unknown arch"):
        load_checkpoint(case.checkpoint, "pixart-gamma")


def test_empty_folder(tmp_path):
    with pytest.raises(ConversionError, match="weight files"):
        load_checkpoint(tmp_path, "pixart-diffusers")


def test_safetensors_needs_no_torch(monkeypatch):
    case = _case("pixart-diffusers")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    model, params = load_checkpoint(case.checkpoint, "pixart-diffusers")
    assert model.config.depth == 2


def test_pth_without_torch_says_so(monkeypatch):
    case = _case("pixart-alpha")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConversionError, match="needs PyTorch"):
        load_checkpoint(case.checkpoint, "pixart-alpha")


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_safetensors(tmp_path, dtype_name):
    """fp16 / bf16 tensors are read without torch's help and keep their dtype (or are cast on request)."""
    import jax.numpy as jnp
    import ml_dtypes
    import torch
    from safetensors.torch import save_file

    case = _case("pixart-diffusers")
    state, cfg, _ = read_state_dict(case.checkpoint)
    dst = tmp_path / dtype_name
    dst.mkdir()
    tdtype = getattr(torch, dtype_name)
    save_file({k: torch.from_numpy(np.array(v, np.float32)).to(tdtype) for k, v in state.items()}, str(dst / "diffusion_pytorch_model.safetensors"))
    (dst / "config.json").write_text(json.dumps(cfg))
    _, params = load_checkpoint(dst, "pixart-diffusers")
    want = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.float16
    assert params["blocks_0"]["attn"]["qkv"]["kernel"].dtype == want
    _, params = load_checkpoint(dst, "pixart-diffusers", dtype=jnp.float32)
    assert params["blocks_0"]["attn"]["qkv"]["kernel"].dtype == np.float32

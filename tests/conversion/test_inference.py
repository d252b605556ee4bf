"""Config inference without a config: every value the shapes (and stored positional tables) determine
is inferred; every value they do not is named in a ConversionWarning, never assumed silently; the
README's XL example converts without a word; PixArt-α converted as Σ (or the reverse) is warned about."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from conversion import ConversionError, ConversionWarning, convert_state_dict, load_checkpoint
from conversion.fixtures import find_cases, load_xl_keys, run_case, synthesize_state_dict
from conversion.io import read_state_dict
from models.layers import pixart_pos_embed

CASES = {c.name: c for c in find_cases()}
# fixture cases of the converters here, and the weights file to convert WITHOUT any config beside it
NO_CONFIG = {
    "pixart_alpha_ms": "model.pth",
    "pixart_sigma_ms": "model.pth",
    "pixart_diffusers": "transformer/diffusion_pytorch_model.safetensors",
    "opensora_v1_0_stdit": "model.pth",
    "opensora_v1_2_stdit3": "checkpoint/model.safetensors",
}
ALIASES = {"pe_interpolation": "lewei_scale"}  # the α manifest uses the original constructor's name


def _case(name):
    if name not in CASES:
        pytest.skip(f"fixture {name} not available")
    return CASES[name]


def _convert(*args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_checkpoint(*args, **kw) if not isinstance(args[0], dict) else convert_state_dict(*args, **kw)
    return out, [w.message for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("name", sorted(NO_CONFIG))
def test_fixture_without_config_is_exact_or_names_every_assumption(name, tmp_path):
    """Converted with no config at all, a (tiny, non-XL) fixture either reproduces the original's
    output or a one-line warning names each value it assumed; passing just those values (from the
    manifest) then gives, with no warning, the manifest's model (whose parity test_parity checks)."""
    case = _case(name)
    weights = tmp_path / NO_CONFIG[name].split("/")[-1]
    shutil.copy(case.folder / NO_CONFIG[name], weights)  # without its config.json
    (model, params), caught = _convert(weights, case.arch)
    assert all("\n" not in str(w) for w in caught)
    assumed = {k: v for w in caught if isinstance(w, ConversionWarning) for k, v in w.assumed.items()}
    if not assumed:
        _, err = run_case(case, model, params)
        assert err <= case.tolerance, f"{name}: silently wrong without config (rel. error {err:.2e})"
        return
    for w in caught:
        assert all(k in str(w) for k in getattr(w, "assumed", {}))
    manifest = case.manifest["config"]
    needed = {k: manifest[k] if k in manifest else manifest[ALIASES[k]] for k in assumed}
    (model, _), caught = _convert(weights, case.arch, needed)
    assert not caught, [str(w) for w in caught]
    reference, _ = load_checkpoint(case.checkpoint, case.arch, manifest)
    assert model.config == reference.config, f"{name}: {needed} given"


def test_inferred_fields_without_config():
    """What the shapes and stored tables determine for the fixtures (the manifests' values)."""
    cfgs = {}
    for name in ("pixart_alpha_ms", "pixart_sigma_ms", "opensora_v1_0_stdit"):
        case = _case(name)
        state, _, _ = read_state_dict(case.checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConversionWarning)
            cfgs[name] = convert_state_dict(dict(state), case.arch)[0].config
    a, s, v = cfgs["pixart_alpha_ms"], cfgs["pixart_sigma_ms"], cfgs["opensora_v1_0_stdit"]
    assert (a.input_size, a.pe_interpolation, a.micro_condition, a.model_max_length, a.caption_channels) == (8, 2.0, True, 8, 64)
    assert (s.input_size, s.pe_interpolation, s.micro_condition, s.model_max_length, s.qk_norm) == (8, 2.0, False, 10, False)
    assert (v.input_size, v.space_scale, v.time_scale) == ((3, 8, 12), 0.5, 1.0)  # a 4 x 6 grid, read from the table


def test_pos_embed_table_reveals_the_scale():
    """A stored pos_embed built with lewei_scale 1 (not the α default 2) is read as such."""
    case = _case("pixart_alpha_ms")
    state, _, _ = read_state_dict(case.checkpoint)
    state = dict(state, pos_embed=pixart_pos_embed(96, 4, 4, 4, 1.0)[None].astype(np.float32))
    with pytest.warns(ConversionWarning) as rec:
        model, _ = convert_state_dict(state, "pixart-alpha")
    assert model.config.pe_interpolation == 1.0 and model.config.input_size == 8
    assert [set(w.message.assumed) for w in rec] == [{"num_heads"}]
    # a zero-filled table gives its shape only: the scale is then assumed, and said so
    with pytest.warns(ConversionWarning) as rec:
        model, _ = convert_state_dict(dict(state, pos_embed=np.zeros((1, 16, 96), np.float32)), "pixart-alpha")
    assert [set(w.message.assumed) for w in rec] == [{"num_heads", "pe_interpolation"}]
    # a config contradicting the stored table is used, with a warning
    with pytest.warns(ConversionWarning, match="lewei_scale=2.0 but the stored pos_embed was built with 1"):
        convert_state_dict(state, "pixart-alpha", {"num_heads": 4, "lewei_scale": 2.0})


@pytest.mark.parametrize("arch", ["pixart-alpha", "pixart-sigma", "stdit", "stdit3"])
def test_readme_xl_example_needs_no_config(arch):
    """`vidq convert --arch pixart-alpha PixArt-XL-2-1024-MS.pth out/` as in the README: the XL
    release shapes fix everything, no warning (synthetic state dict of the released keys/shapes)."""
    listing = load_xl_keys(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = convert_state_dict(synthesize_state_dict(listing), arch)
    cfg, ref = model.config, listing["config"]
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads) == (1152, 28, 16)
    if arch.startswith("pixart"):
        assert (cfg.input_size, cfg.pe_interpolation) == (128, 2.0)
        assert cfg.model_max_length == ref["model_max_length"]
    if arch == "stdit":
        assert cfg.input_size == tuple(ref["input_size"]) and cfg.space_scale == ref["space_scale"]


def test_xl_diffusers_without_config_json_warns_about_its_size():
    """Several XL diffusers releases share these shapes (Σ 512 / 1024 / 2K, α 512): without
    config.json the sample size is an assumption, and said so."""
    with pytest.warns(ConversionWarning) as rec:
        model, _ = convert_state_dict(synthesize_state_dict(load_xl_keys("pixart-diffusers")), "pixart-diffusers")
    assert set(rec[0].message.assumed) == {"sample_size", "interpolation_scale"} and model.config.num_heads == 16


@pytest.mark.parametrize("listing, arch, other", [("pixart-alpha", "pixart-sigma", "pixart-alpha"),
                                                  ("pixart-sigma", "pixart-alpha", "pixart-sigma")])
def test_alpha_sigma_confusion_is_warned(listing, arch, other):
    with pytest.warns(ConversionWarning, match=rf"converted as {arch}, but .* looks like a {other} checkpoint"):
        convert_state_dict(synthesize_state_dict(load_xl_keys(listing)), arch)


def test_tiny_alpha_ms_as_sigma_is_warned():
    case = _case("pixart_alpha_ms")
    state, _, _ = read_state_dict(case.checkpoint)
    with pytest.warns(ConversionWarning, match="micro-condition embedders of PixArt-α-MS"):
        convert_state_dict(dict(state), "pixart-sigma", case.manifest["config"])


def test_no_warning_when_the_conversion_fails():
    case = _case("pixart_alpha_ms")
    state, _, _ = read_state_dict(case.checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConversionError):
            convert_state_dict(dict(state), "pixart-diffusers")

"""Hypothesis fuzzing of the converters with damaged checkpoints: random truncation, random bytes,
malformed safetensors headers, renamed keys, reshaped tensors and wrong archs. Every outcome is a
consistent model (params fit the module; values assumed are named in a ConversionWarning) or a
ConversionError: one line for an unreadable file, the key listing for a state dict that does not
match. Never an exception from deep inside numpy / torch / flax."""

from __future__ import annotations

import json
import shutil
import struct
import warnings

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversion import ARCHS, ConversionError, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.fixtures import find_cases
from conversion.io import read_state_dict

FUZZ = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
CASES = {c.name: c for c in find_cases() if c.arch in ARCHS}
FILES = {  # one file per reader: torch zip, safetensors (diffusers folder), safetensors + config.json
    "pixart_alpha_ms": "model.pth",
    "pixart_diffusers": "transformer/diffusion_pytorch_model.safetensors",
    "opensora_v1_2_stdit3": "checkpoint/model.safetensors",
}


def _case(name):
    if name not in CASES:
        pytest.skip(f"fixture {name} not available")
    return CASES[name]


_STATES: dict[str, dict] = {}


def _state(name):
    if name not in _STATES:
        _STATES[name] = dict(read_state_dict(_case(name).checkpoint)[0])
    return dict(_STATES[name])


def _consistent(model, params):
    """The params fit the module exactly (so model.apply runs)."""
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs()))["params"]
    assert shapes_of(params) == shapes_of(expected)


def _outcome(fn):
    """Run a conversion: a consistent model, or a ConversionError: one line, unless it lists the
    missing / unexpected / mis-shaped keys of a readable state dict."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # assumptions are named; test_inference checks that
        try:
            model, params = fn()
        except ConversionError as e:
            msg = str(e)
            listing = e.missing or e.unexpected or e.mismatched
            assert msg and ("\n" not in msg or listing), msg
            return None
    _consistent(model, params)
    return model


@FUZZ
@given(name=st.sampled_from(sorted(FILES)), frac=st.floats(0.0, 0.999))
def test_truncated_file(name, frac, tmp_path_factory):
    case = _case(name)
    src = case.folder / FILES[name]
    dst = tmp_path_factory.mktemp("trunc") / src.name
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    assert _outcome(lambda: load_checkpoint(dst, case.arch, case.manifest["config"])) is None


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".pth", ".safetensors", ".bin", ".ckpt", ""]))
def test_random_bytes(data, suffix, tmp_path_factory):
    f = tmp_path_factory.mktemp("bytes") / f"model{suffix}"
    f.write_bytes(data)
    assert _outcome(lambda: load_checkpoint(f, "pixart-alpha")) is None


_dtypes = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", "X", 3, None])
_ints = st.one_of(st.integers(-4, 64), st.just(2**40), st.text(max_size=2), st.none())
_entry = st.fixed_dictionaries(
    {},
    optional={"dtype": _dtypes, "shape": st.one_of(st.lists(_ints, max_size=4), _ints),
              "data_offsets": st.one_of(st.lists(_ints, max_size=3), _ints)},
)
_header = st.dictionaries(st.text(max_size=6), st.one_of(_entry, _ints, st.lists(_ints, max_size=2)), max_size=4)


@FUZZ
@given(header=_header, payload=st.binary(max_size=256))
def test_malformed_safetensors_header(header, payload, tmp_path_factory):
    raw = json.dumps(header).encode()
    f = tmp_path_factory.mktemp("st") / "model.safetensors"
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    config = _case("pixart_diffusers").manifest["config"]  # a tiny model: cheap to build
    assert _outcome(lambda: load_checkpoint(f, "pixart-diffusers", config)) is None


@FUZZ
@given(name=st.sampled_from(["pixart_alpha_ms", "pixart_diffusers", "opensora_v1_0_stdit"]), data=st.data())
def test_renamed_key(name, data):
    case = _case(name)
    state = _state(name)
    key = data.draw(st.sampled_from(sorted(state)), "key")
    new = data.draw(st.one_of(st.text(max_size=12), st.sampled_from(sorted(state))), "new name")
    state[new] = state.pop(key)
    _outcome(lambda: convert_state_dict(state, case.arch, case.manifest["config"]))


@FUZZ
@given(name=st.sampled_from(["pixart_alpha_ms", "pixart_sigma_ms", "opensora_v1_0_stdit", "opensora_v1_2_stdit3"]),
       data=st.data(), with_config=st.booleans())
def test_reshaped_tensor(name, data, with_config):
    case = _case(name)
    state = _state(name)
    key = data.draw(st.sampled_from(sorted(state)), "key")
    shape = tuple(data.draw(st.lists(st.integers(0, 9), max_size=5), "shape"))
    state[key] = np.ones(shape, np.float32) * 0.5
    config = case.manifest["config"] if with_config else None
    _outcome(lambda: convert_state_dict(state, case.arch, config))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_wrong_arch(arch):
    for name in ("pixart_alpha_ms", "pixart_diffusers", "opensora_v1_0_stdit", "opensora_v1_2_stdit3"):
        case = _case(name)
        if case.arch == arch:
            continue
        model = _outcome(lambda: convert_state_dict(_state(name), arch))
        assert model is None or {case.arch, arch} <= {"pixart-alpha", "pixart-sigma"}


def test_not_an_array_value():
    state = _state("pixart_alpha_ms")
    state["t_block.1.weight"] = [[1.0, 2.0]]
    assert _outcome(lambda: convert_state_dict(state, "pixart-alpha")) is None

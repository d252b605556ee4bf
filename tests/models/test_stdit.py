"""Open-Sora STDiT (1.0) / STDiT3 (1.2): models and checkpoint conversion (CPU, fast).

Golden parity is also covered by the generic ``tests/test_parity.py``; here: the same call path for
both fixtures, full-size key coverage from ``xl_keys/`` (zero-copy synthetic tensors), converter
error quality, input validation, and model properties (padding, x_mask, dynamic size, determinism).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion import ConversionError, convert_state_dict, load_checkpoint
from conversion.common import shapes_of
from conversion.io import read_state_dict
from conversion.stdit import fuse_split_qkv
from models import build_model
from models.layers import FinalLayer, layer_norm, modulate
from models.stdit import STDIT_PRESETS, STDiT, STDiTConfig, stdit_spatial_pos_embed, stdit_temporal_pos_embed
from models.stdit3 import STDIT3_PRESETS, STDiT3, STDiT3Config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("VIDQ_FIXTURES", REPO.parent / "shared" / "fixtures"))
CASES = {"stdit": "opensora_v1_0_stdit", "stdit3": "opensora_v1_2_stdit3"}

needs_fixtures = pytest.mark.skipif(
    not all((FIXTURES / c / "manifest.json").exists() for c in CASES.values()),
    reason=f"Open-Sora fixtures not found under {FIXTURES}",
)


def _manifest(arch: str) -> dict:
    return json.loads((FIXTURES / CASES[arch] / "manifest.json").read_text())


def _load(arch: str):
    m = _manifest(arch)
    return load_checkpoint(FIXTURES / CASES[arch] / m["checkpoint"], arch, m["config"])


def _call(arch: str) -> tuple[list, dict, np.ndarray]:
    """The manifest call in channels-last form: (args, kwargs, reference output channels-last)."""
    m = _manifest(arch)
    d = FIXTURES / CASES[arch]
    inp = dict(np.load(d / m["inputs"]))
    args = [inp[a] for a in m["call"]["args"]]
    args[0] = np.moveaxis(args[0], 1, -1)  # NCTHW -> NTHWC
    args[2] = args[2][:, 0]  # (B, 1, L, C) -> (B, L, C)
    kwargs = {k: inp[v] if isinstance(v, str) else v for k, v in m["call"]["kwargs"].items()}
    ref = np.moveaxis(np.load(d / m["outputs"])["out"], 1, -1)
    return args, kwargs, ref


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _raw_state(arch: str) -> dict:
    m = _manifest(arch)
    state, _, _ = read_state_dict(FIXTURES / CASES[arch] / m["checkpoint"])
    return state


# ------------------------------------------------------------------------------------------------
# golden fixtures through the generic call path
# ------------------------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("arch", sorted(CASES))
def test_fixture_parity(arch):
    model, params = _load(arch)
    args, kwargs, ref = _call(arch)
    out = jax.jit(lambda p, *a, **k: model.apply({"params": p}, *a, **k))(params, *args, **kwargs)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    assert _rel(out, ref) < _manifest(arch)["tolerance"]


@needs_fixtures
def test_stdit_stored_tables_equal_recomputed():
    state = _raw_state("stdit")
    cfg = STDiTConfig.from_original(_manifest("stdit")["config"])
    gt, gh, gw = cfg.grid
    np.testing.assert_allclose(state["pos_embed"][0], stdit_spatial_pos_embed(cfg.hidden_size, gh, gw, cfg.space_scale), atol=1e-6)
    np.testing.assert_allclose(state["pos_embed_temporal"][0], stdit_temporal_pos_embed(cfg.hidden_size, gt, cfg.time_scale), atol=1e-6)


@needs_fixtures
def test_stdit3_loads_from_config_json_alone():
    """The HF folder layout carries its own config: no caller config needed."""
    d = FIXTURES / CASES["stdit3"]
    model, _ = load_checkpoint(d / "checkpoint", "stdit3")
    assert model.config == STDiT3Config.from_original(_manifest("stdit3")["config"])


# ------------------------------------------------------------------------------------------------
# full-size key coverage (zero-copy synthetic XL state dicts)
# ------------------------------------------------------------------------------------------------


def _xl_state(arch: str) -> tuple[dict, dict]:
    spec = json.loads((FIXTURES / "xl_keys" / f"{arch}.json").read_text())
    state = {
        e["key"]: np.broadcast_to(np.zeros((), np.dtype(e["dtype"].removeprefix("torch."))), tuple(e["shape"]))
        for e in spec["keys"]
    }
    assert len(state) == spec["num_entries"]
    return state, spec


XL = {"stdit": (STDiT, STDIT_PRESETS["stdit-xl-2-16x512x512"]), "stdit3": (STDiT3, STDIT3_PRESETS["stdit3-xl-2"])}


@pytest.mark.skipif(not (FIXTURES / "xl_keys").is_dir(), reason="xl_keys not found")
@pytest.mark.parametrize("with_config", [True, False], ids=["config", "inferred"])
@pytest.mark.parametrize("arch", sorted(XL))
def test_xl_key_coverage(arch, with_config):
    state, spec = _xl_state(arch)
    model, params = convert_state_dict(state, arch, spec["config"] if with_config else None)
    cls, preset = XL[arch]
    assert model.config == preset
    ref_model = cls(preset)
    ref = jax.eval_shape(lambda: ref_model.init(jax.random.PRNGKey(0), **ref_model.init_inputs()))["params"]
    got, want = shapes_of(params), shapes_of(ref)
    assert got == want
    # every checkpoint element is used except the recomputable tables / rope frequencies
    dropped = {"stdit": {"pos_embed", "pos_embed_temporal"}, "stdit3": {"rope.freqs"}}[arch]
    n_params = sum(math.prod(s) for s in got.values())
    n_state = sum(math.prod(e["shape"]) for e in spec["keys"] if e["key"] not in dropped)
    assert n_params == n_state


@pytest.mark.skipif(not (FIXTURES / "xl_keys").is_dir(), reason="xl_keys not found")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xl_stdit_256_scale_inferred_from_table(dtype):
    """A 16x256x256 checkpoint is recognised from its stored pos_embed (size and space_scale 0.5)."""
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    state, _ = _xl_state("stdit")
    state["pos_embed"] = stdit_spatial_pos_embed(1152, 16, 16, 0.5)[None].astype(dt)
    state["pos_embed_temporal"] = stdit_temporal_pos_embed(1152, 16, 1.0)[None].astype(dt)
    model, _ = convert_state_dict(state, "stdit")
    assert model.config == STDIT_PRESETS["stdit-xl-2-16x256x256"]


# ------------------------------------------------------------------------------------------------
# converter: variants and errors
# ------------------------------------------------------------------------------------------------


def _split(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if ".qkv." in k:
            for part, rows in zip("qkv", np.split(v, 3, axis=0)):
                out[k.replace(".qkv.", f".{part}.")] = rows
        else:
            out[k] = v
    return out


@needs_fixtures
@pytest.mark.parametrize("arch", sorted(CASES))
def test_vidit_q_split_checkpoint(arch):
    state = _raw_state(arch)
    cfg = _manifest(arch)["config"]
    split = _split(state)
    assert any(".attn.q.weight" in k for k in split) and not any(".qkv." in k for k in split)
    _, want = convert_state_dict(state, arch, cfg)
    _, got = convert_state_dict(split, arch, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_fuse_split_qkv_incomplete_left_alone():
    s = {"blocks.0.attn.q.weight": np.zeros((2, 2)), "blocks.0.attn.k.weight": np.zeros((2, 2))}
    assert fuse_split_qkv(s) == s


@needs_fixtures
@pytest.mark.parametrize("arch", sorted(CASES))
def test_bad_state_dict_names_every_problem(arch):
    state = dict(_raw_state(arch))
    cfg = _manifest(arch)["config"]
    blk = "blocks" if arch == "stdit" else "spatial_blocks"
    missing = f"{blk}.1.mlp.fc2.bias"
    misshaped = f"{blk}.0.cross_attn.proj.weight"
    del state[missing]
    state["blocks.0.surprise.weight"] = np.zeros((3,), np.float32)
    state[misshaped] = np.zeros((5, 7), np.float32)
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, arch, cfg, source="broken.ckpt")
    e = ei.value
    assert e.missing == [missing]
    assert e.unexpected == ["blocks.0.surprise.weight"]
    assert [m[0] for m in e.mismatched] == [misshaped]
    msg = str(e)
    for k in (missing, "blocks.0.surprise.weight", misshaped, "broken.ckpt", "(5, 7)"):
        assert k in msg


@needs_fixtures
def test_bad_buffers_reported_with_the_rest():
    state = dict(_raw_state("stdit"))
    state["pos_embed"] = np.zeros((1, 7, 64), np.float32)
    del state["final_layer.linear.bias"]
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(state, "stdit", _manifest("stdit")["config"])
    assert ei.value.missing == ["final_layer.linear.bias"]
    assert ("pos_embed", (1, 7, 64), (1, 24, 64)) in ei.value.mismatched

    state3 = dict(_raw_state("stdit3"))
    state3["rope.freqs"] = np.zeros((5,), np.float32)
    with pytest.raises(ConversionError, match=r"rope\.freqs: checkpoint \(5,\) vs expected \(8,\)"):
        convert_state_dict(state3, "stdit3", _manifest("stdit3")["config"])


@needs_fixtures
def test_wrong_arch_reports_keys():
    with pytest.raises(ConversionError) as ei:
        convert_state_dict(_raw_state("stdit3"), "stdit", _manifest("stdit")["config"])
    assert "spatial_blocks.0.attn.qkv.weight" in ei.value.unexpected
    assert "blocks.0.attn_temp.qkv.weight" in ei.value.missing


@needs_fixtures
def test_truncated_safetensors(tmp_path):
    src = FIXTURES / CASES["stdit3"] / "checkpoint"
    dst = tmp_path / "checkpoint"
    shutil.copytree(src, dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        load_checkpoint(dst, "stdit3")


@needs_fixtures
def test_unsupported_and_unknown_config():
    state = _raw_state("stdit3")
    with pytest.raises(ConversionError, match="skip_y_embedder"):
        convert_state_dict(state, "stdit3", {"skip_y_embedder": True})
    with pytest.warns(UserWarning, match="not_a_field"):
        convert_state_dict(state, "stdit3", {"not_a_field": 1})
    with pytest.raises(ConversionError, match="num_heads"):
        convert_state_dict(_raw_state("stdit"), "stdit", {"num_heads": 5})


# ------------------------------------------------------------------------------------------------
# model behaviour
# ------------------------------------------------------------------------------------------------

TINY = dict(hidden_size=32, depth=2, num_heads=2, caption_channels=16, model_max_length=5)


@pytest.fixture(scope="module")
def tiny3():
    """A tiny random STDiT3 (jitted init and apply: eager dispatch is slow on CPU)."""
    model = STDiT3(STDiT3Config(**TINY))
    inputs = model.init_inputs(batch=2, frames=3, height=8, width=12)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), **inputs)["params"]
    apply = jax.jit(lambda x, **kw: model.apply({"params": params}, x, **kw))
    return model, params, apply


@pytest.fixture(scope="module")
def tiny1():
    """A tiny random STDiT with latent (2, 4, 4), batch 4."""
    model = STDiT(STDiTConfig(input_size=(2, 4, 4), **TINY))
    inputs = model.init_inputs(batch=4)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), **inputs)["params"]
    apply = jax.jit(lambda x, **kw: model.apply({"params": params}, x, **kw))
    return model, params, apply


def _cond(b: int, seed: int = 1) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    return dict(
        timestep=jnp.array([10.0, 700.0])[:b],
        y=jax.random.normal(k[0], (b, 5, 16)),
        mask=jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])[:b],
        fps=jnp.full((b,), 24.0),
        height=jnp.full((b,), 512.0),
        width=jnp.full((b,), 768.0),
    )


def test_stdit_wrong_input_size_named(tiny1):
    model, params, _ = tiny1
    inputs = model.init_inputs()
    inputs["x"] = jnp.zeros((1, 2, 4, 6, 4))
    with pytest.raises(ValueError, match=r"\(T, H, W, C\) = \(2, 4, 4, 4\).*\(1, 2, 4, 6, 4\)"):
        jax.eval_shape(lambda: model.apply({"params": params}, **inputs))


def test_stdit3_needs_size_conditions(tiny3):
    model, params, _ = tiny3
    cond = _cond(2)
    del cond["fps"]
    with pytest.raises(ValueError, match="fps"):
        jax.eval_shape(lambda: model.apply({"params": params}, jnp.zeros((2, 3, 8, 12, 4)), **cond))


def test_stdit3_padding_and_crop(tiny3):
    """Odd latent H/W are zero-padded at the end and cropped back: same as padding by hand."""
    _, _, apply = tiny3
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 7, 11, 4))
    out = apply(x, **_cond(2))
    assert out.shape == (2, 3, 7, 11, 8)
    ref = apply(jnp.pad(x, [(0, 0), (0, 0), (0, 1), (0, 1), (0, 0)]), **_cond(2))
    np.testing.assert_allclose(out, ref[:, :, :7, :11], rtol=1e-6, atol=1e-6)


def test_stdit3_caption_padding_and_size_rows(tiny3):
    _, _, apply = tiny3
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 8, 12, 4))
    cond = _cond(2)
    base = apply(x, **cond)
    # padded caption slots have no influence at all
    np.testing.assert_array_equal(apply(x, **dict(cond, y=cond["y"].at[0, 3:].set(100.0))), base)
    # only height[0] / width[0] are read (as the original) ...
    rows = dict(cond, height=cond["height"].at[1].set(64.0), width=cond["width"].at[1].set(64.0))
    np.testing.assert_array_equal(apply(x, **rows), base)
    # ... and they matter, as does fps
    assert _rel(apply(x, **dict(cond, height=cond["height"] * 2)), base) > 1e-3
    assert _rel(apply(x, **dict(cond, fps=cond["fps"] / 3)), base) > 1e-3


def test_stdit3_x_mask(tiny3):
    _, _, apply = tiny3
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 8, 12, 4))
    cond = _cond(2)
    base = apply(x, **cond)
    np.testing.assert_array_equal(apply(x, **cond, x_mask=jnp.ones((2, 3), bool)), base)
    part = apply(x, **cond, x_mask=jnp.array([[False, True, True], [True, True, True]]))
    assert _rel(part[0], base[0]) > 1e-3  # row 0 has a clean (timestep-0) frame ...
    np.testing.assert_allclose(part[1], base[1], rtol=1e-6, atol=1e-6)  # ... row 1 is untouched
    with pytest.raises(ValueError, match="x_mask"):
        apply(x, **cond, x_mask=jnp.ones((2, 4), bool))


def test_final_layer_x_mask_quirk():
    """Frames with x_mask False: modulate(LN(modulate(LN(x), t)), t0) (the original reuses x)."""
    layer = FinalLayer(6)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 2 * 3, 8))
    t, t0 = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 8))
    p = jax.jit(layer.init)(jax.random.PRNGKey(2), x, t)
    out = layer.apply(p, x, t, x_mask=jnp.array([[True, False]]), t_zero=t0, num_frames=2)
    table = p["params"]["scale_shift_table"]
    lin = p["params"]["linear"]
    first = modulate(layer_norm(x), table[0] + t[:, None], table[1] + t[:, None])
    second = modulate(layer_norm(first), table[0] + t0[:, None], table[1] + t0[:, None])
    want = jnp.concatenate([first[:, :3], second[:, 3:]], 1) @ lin["kernel"] + lin["bias"]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_stdit3_dynamic_sizes(tiny3):
    model, params, _ = tiny3
    for shape in [(1, 1, 4, 4, 4), (1, 5, 6, 10, 4)]:
        out = jax.eval_shape(lambda: model.apply({"params": params}, jnp.ones(shape), **_cond(1)))
        assert out.shape == (*shape[:4], 8) and out.dtype == jnp.float32


def test_determinism(tiny1, tiny3):
    model, params, apply = tiny1
    inputs = model.init_inputs(batch=4)
    x = jax.random.normal(jax.random.PRNGKey(4), inputs.pop("x").shape)
    np.testing.assert_array_equal(apply(x, **inputs), apply(x, **inputs))
    _, _, apply3 = tiny3
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 8, 12, 4))
    np.testing.assert_array_equal(apply3(x, **_cond(2)), apply3(x, **_cond(2)))


def test_cfg_mask_tiling_stdit(tiny1):
    """A mask of B/2 rows is reused by the second (unconditional) half, as the original."""
    model, _, apply = tiny1
    inputs = model.init_inputs(batch=4)
    x = jax.random.normal(jax.random.PRNGKey(1), inputs["x"].shape)
    y = jax.random.normal(jax.random.PRNGKey(2), inputs["y"].shape)
    t = jnp.array([1.0, 500.0, 1.0, 500.0])
    half = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    a = apply(x, timestep=t, y=y, mask=half)
    b = apply(x, timestep=t, y=y, mask=jnp.concatenate([half, half]))
    np.testing.assert_array_equal(a, b)
    assert _rel(apply(x, timestep=t, y=y, mask=None), a) > 1e-3


@pytest.mark.parametrize("name", ["STDiT", "STDiT3"])
def test_config_round_trip(name):
    cfg = STDIT_PRESETS["stdit-xl-2-16x256x256"] if name == "STDiT" else STDIT3_PRESETS["stdit3-xl-2"]
    d = json.loads(json.dumps(cfg.to_dict()))
    model = build_model(name, d, dtype=jnp.bfloat16)
    assert model.config == cfg and model.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="unknown"):
        type(cfg).from_dict({**d, "bogus": 1})

"""The sampling knobs of ``vidq quantize`` / ``vidq sample`` (``DemoModel.with_settings``) and the family
rule behind them: STDiT3 declares how a latent's pixel sizes are derived for the rectified-flow shift
(``SamplerDefaults.size_keywords``), so calibration and sampling of any STDiT3 folder need no flags."""

from __future__ import annotations

import pytest

from models.families import STDIT3
from models.stdit import STDiT, STDiTConfig
from models.stdit3 import STDiT3, STDiT3Config
from vidq_jax import pipeline
from vidq_jax.bundled import DemoModel, load_demo_model
from vidq_jax.errors import VidqError


@pytest.mark.parametrize("shape, given, derived", [
    ((2, 2, 8, 8, 4), {}, {"use_timestep_transform": False}),  # 2 latent frames = a short clip: no shift
    ((2, 5, 8, 8, 4), {}, {"height": 64, "width": 64, "num_frames": 17}),
    ((1, 15, 30, 53, 4), {}, {"height": 240, "width": 424, "num_frames": 51}),  # Open-Sora's 51-frame 240p
    ((1, 7, 4, 4, 4), {"height": 30}, {"width": 32, "num_frames": 25}),
    ((1, 1, 4, 6, 4), {}, {"height": 32, "width": 48, "num_frames": 1}),
    ((1, 4, 6, 4), {}, {"height": 32, "width": 48, "num_frames": 1}),  # an image latent
    ((1, 2, 8, 8, 4), {"num_frames": 34}, {"height": 64, "width": 64}),
    ((1, 5, 8, 8, 4), {"use_timestep_transform": False}, {}),
    ((1, 5, 8, 8, 4), {"ratio": 2.0}, {}),
])
def test_stdit3_derives_rflow_sizes(shape, given, derived):
    model = STDiT3(STDiT3Config(hidden_size=32, depth=1, num_heads=2, caption_channels=8, model_max_length=4))
    assert pipeline.size_keywords(model, "rflow", shape, given) == derived
    assert pipeline.size_keywords(model, "dpm_solver", shape, given) == {}  # not the family's sampler
    assert STDIT3.sampler.size_keywords is not None


def _demo(model, meta=None):
    return DemoModel(folder=None, model=model, params=None, meta={"arch": "m", **(meta or {})})


def test_with_settings_sizes_and_sampler():
    v = load_demo_model("t2v")  # the bundled STDiT3: 8 x 32 x 32 pixel clips, rflow without the shift
    w = v.with_settings(num_frames=4, height=16, steps=3, guidance_scale=2.0)
    assert w.sample_shape == (4, 16, 32, 3) and v.sample_shape == (8, 32, 32, 3)
    assert w.sampler == {"sampler": "rflow", "steps": 3, "guidance_scale": 2.0, "use_timestep_transform": False}
    d = v.with_settings(sampler="ddim")
    assert d.sampler == {"sampler": "ddim", "steps": v.steps, "guidance_scale": v.sampler["guidance_scale"]}
    with pytest.raises(VidqError, match="--num-frames: pixart-emoji-32 is an image model"):
        load_demo_model("t2i").with_settings(num_frames=2)
    assert v.with_settings(width=5).sample_shape == (8, 32, 5, 3)  # STDiT3 pads to the patch
    with pytest.raises(VidqError, match=r"--width 5: pixart-emoji-32 cannot sample \(32, 5\): .*multiples of the patch"):
        load_demo_model("t2i").with_settings(width=5)
    # a converted folder without sampler settings gets the family's release sampler
    m = _demo(STDiT3(STDiT3Config(hidden_size=32, depth=1, num_heads=2, caption_channels=8, model_max_length=4)))
    assert m.with_settings(steps=4).sampler == {"sampler": "rflow", "steps": 4, "guidance_scale": 7.0}
    assert m.with_settings(num_frames=5).sample_shape == (5, 8, 8, 4)


def test_with_settings_fixed_size_model():
    m = _demo(STDiT(STDiTConfig(input_size=(2, 4, 4), hidden_size=32, depth=1, num_heads=2, caption_channels=8,
                                model_max_length=4)))
    with pytest.raises(VidqError, match=r"--height: .* samples the one size its config fixes, \(2, 4, 4\)"):
        m.with_settings(height=8)


def test_sample_verb_applies_the_knobs(tmp_path, capsys, monkeypatch):
    """`vidq sample --num-frames/--steps/--guidance` on the bundled video model (prompt features faked:
    the text extra is optional)."""
    import numpy as np
    from PIL import Image

    from vidq_jax.cli import main
    from vidq_jax.data import text

    def fake_encode(prompts):
        rng = np.random.default_rng(0)
        return rng.standard_normal((len(prompts), 16, 384)).astype(np.float32), np.ones((len(prompts), 16), np.int32)

    monkeypatch.setattr(text, "encode_prompts", fake_encode)
    gif = tmp_path / "cat.gif"
    assert main(["sample", "--prompt", "a cat moving left", "--model", "t2v", "--num-frames", "4", "--steps", "2",
                 "--guidance", "2", "--scale", "1", "--out", str(gif)]) == 0
    assert "rflow 2 steps, CFG 2 (use_timestep_transform=False)" in capsys.readouterr().out
    assert Image.open(gif).n_frames == 4

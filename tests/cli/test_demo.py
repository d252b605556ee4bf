"""The main job (`make demo` / `vidq demo`) end to end on tiny stand-ins of the bundled models, and
its error when a model folder is missing."""

import json

import numpy as np
from PIL import Image

from vidq_jax.cli import main
from vidq_jax.demo import run_demo


def test_demo_on_standins(standin_models, standin_c2i, tmp_path):
    out = run_demo(tmp_path / "demo", t2i=standin_models["t2i"], t2v=standin_models["t2v"], c2i=standin_c2i,
                   counts={"t2i": 3, "t2v": 2, "c2i": 2}, progress=False)
    assert set(out) == {"png", "gif", "class_png", "report"} and out["class_png"].name == "class_grid.png"
    grid = np.asarray(Image.open(out["class_png"]).convert("RGB"))
    assert grid.shape[0] > 2 * 128 and grid.shape[1] > 3 * 128  # 2 class labels x 3 variants
    png = np.asarray(Image.open(out["png"]).convert("RGB"))
    assert png.shape[0] > 3 * 128 and png.shape[1] > 3 * 128  # 3 prompts x 3 variants of 4x-upscaled 32-px samples
    gif = Image.open(out["gif"])
    assert gif.n_frames == 8 and gif.size[1] > 2 * 128
    text = out["report"].read_text()
    for s in ("pixart-emoji-32", "stdit3-sprites-8x32", "W8A8", "W4A8-MP", "PSNR vs FP", "motion acc",
              "sample FP (compile + run)", "quantize W4A8-MP", "Fréchet distance is not reported", "All samples finite",
              "dit-emoji-32 (class-conditional image)", 'class labels (2): "Smileys & Emotion"; "Flags"', "class_grid.png"):
        assert s in text, s
    assert "| FP | `fp` | 16 (bf16) |" in text


def test_demo_missing_model_names_path_and_remedy(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["demo", "--only", "t2v", "--t2v", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "python -m vidq_jax.train t2v" in err
    assert main(["demo", "--only", "c2i", "--c2i", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "python -m vidq_jax.train c2i" in err
    assert main(["demo", "--models-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "pixart-emoji-32") in err and "assets/models" in err
    assert not (tmp_path / "o").exists()


def test_exported_sampler_settings(standin_models):
    from vidq_jax.bundled import load_demo_model

    v = load_demo_model(standin_models["t2v"])
    meta = json.loads((standin_models["t2v"] / "model.json").read_text())
    assert v.sampler == {"sampler": "rflow", "steps": meta["sampler"]["steps"], "guidance_scale": 4.0,
                         "use_timestep_transform": False}
    assert v.task == "t2v" and v.is_video and v.sample_shape == (8, 32, 32, 3)
    i = load_demo_model(standin_models["t2i"], "t2i")
    assert i.sampler["sampler"] == "dpm_solver" and i.sampler["discretization"] == "diffusers"

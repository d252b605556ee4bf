"""`vidq convert / quantize / sample` on a class-conditional model (DiT, the facebook_dit_xl_style fixture):
`--class NAME|INDEX` instead of `--prompt`, class-label calibration conditioning."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vidq_jax.bundled import load_demo_model
from vidq_jax.cli import _calibration_cond, main
from vidq_jax.errors import VidqError


def test_sample_by_class(converted, tmp_path, capsys):
    folder = converted("dit")
    png = tmp_path / "c.png"
    argv = ["sample", "--class", "3", "--class", "0", "--model", str(folder), "--steps", "1", "--out", str(png)]
    assert main(argv) == 0
    assert "sampled 2 class(es) with dit (fp, iddpm 1 steps, CFG 4)" in capsys.readouterr().out
    assert np.asarray(Image.open(png)).shape[0] > 0
    for argv, words in ((["--class", "10"], ["--class '10'", "not a class", "0, 1, 2"]),
                        (["--prompt", "a cat"], ["--prompt", "class labels", "--class"]),
                        ([], ["--class", "class-conditional"])):
        assert main(["sample", *argv, "--model", str(folder), "--out", str(png)]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and err.count("\n") == 1, err


def test_calibration_labels(converted, tmp_path):
    dm = load_demo_model(converted("dit"))
    cond, uncond, source, n = _calibration_cond(dm, None, 3)
    assert n == 3 and uncond is None and set(cond) == {"y"} and "random class labels" in source
    assert cond["y"].shape == (3,) and int(np.max(cond["y"])) < 10
    np.savez(tmp_path / "labels.npz", y=np.array([1, 2, 7]))
    cond, uncond, _, n = _calibration_cond(dm, str(tmp_path / "labels.npz"), None)
    assert n == 3 and cond["y"].tolist() == [1, 2, 7] and uncond is None
    np.savez(tmp_path / "caption.npz", y=np.ones((2, 4, 8), np.float32))
    with pytest.raises(VidqError, match=r"one array 'y' of \(P,\) integer class labels; it holds 'y' float32"):
        _calibration_cond(dm, str(tmp_path / "caption.npz"), None)

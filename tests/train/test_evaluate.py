"""The text-to-video evaluation of a training export (``python -m vidq_jax.train eval-t2v``): the shipped video
feature network is right on real clips (so the FP target >= 80 % is reachable with it), the CFG choice, and a
run on the tiny stand-in export that writes its report and the chosen scale."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from vidq_jax.train.evaluate import evaluate_t2v, pick_guidance, score_clips

needs_animals = pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="animal-mnist not installed")


@needs_animals
def test_feature_net_is_right_on_real_clips():
    from vidq_jax.data.video import VideoDataset
    from vidq_jax.eval.quality import load_reference

    extractor, _ = load_reference("video")
    c = VideoDataset(seed=11, split="test").clips(np.arange(48))
    r = score_clips(extractor, c["video"], c["animal"], c["direction"])
    assert r["n"] == 48 and r["subject_acc"] >= 0.9 and r["motion_acc"] >= 0.95
    assert len(r["predicted"]) == 48 and r["predicted"][0].split()[1] in ("left", "right", "up", "down")


def test_pick_guidance_best_then_exported_then_lowest():
    s = lambda a, m: {"subject_acc": a, "motion_acc": m}  # noqa: E731
    assert pick_guidance({2.0: s(0.5, 0.5), 4.0: s(0.9, 0.8), 6.0: s(0.8, 0.8)}, 4.0) == 4.0
    assert pick_guidance({2.0: s(0.7, 0.7), 4.0: s(0.6, 0.8), 6.0: s(0.7, 0.7)}, 4.0) == 4.0
    assert pick_guidance({2.0: s(0.7, 0.7), 3.0: s(0.7, 0.7), 6.0: s(0.1, 0.7)}, 4.0) == 2.0


def test_eval_t2v_on_tiny_export_writes_report_and_guidance(standin_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(standin_models["t2v"], folder)
    rep = evaluate_t2v(folder, guidance=(2.5,), write=True, steps=1, sets=("demo",), log=lambda s: None)
    assert set(rep["selection"]) == {"2.5"} and rep["chosen_guidance"] == 2.5
    assert list(rep["sets"]) == ["demo"] and rep["sets"]["demo"]["n"] == 2
    assert 0.0 <= rep["sets"]["demo"]["subject_acc"] <= 1.0
    sens = rep["direction_sensitivity"]  # loss with a wrong direction word vs the true caption, per flow time
    assert list(sens) == ["0.8", "0.9", "0.95", "0.98"]
    assert all(np.isfinite([r["loss"], r["flip"], r["axis"]]).all() and r["loss"] > 0 for r in sens.values())
    assert json.loads((tmp_path / "eval.json").read_text())["chosen_guidance"] == rep["chosen_guidance"]
    assert json.loads((folder / "model.json").read_text())["sampler"]["guidance_scale"] == rep["chosen_guidance"]
    with pytest.raises(ValueError, match="text-to-video"):
        evaluate_t2v(standin_models["t2i"], sets=(), log=lambda s: None)

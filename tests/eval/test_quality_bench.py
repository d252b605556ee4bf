"""benchmarks.quality in its tiny mode on the stand-in models (a CI smoke run of the table)."""

import json
import runpy


def test_quality_tiny(standin_models, tmp_path):
    bench = runpy.run_module("benchmarks.quality", run_name="quality_bench", alter_sys=True)
    out = tmp_path / "quality"
    assert bench["main"](["--models", str(standin_models["t2i"]), str(standin_models["t2v"]), "--tiny",
                          "--presets", "viditq-w4a8-mp", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    assert [(r["task"], r["preset"]) for r in rows] == [(t, p) for t in ("t2i", "t2v")
                                                         for p in ("fp", "viditq-w4a8-mp")]
    for r in rows:
        assert r["finite"] and r["bytes"] > 0 and {"psnr", "ssim", "fd", "cond_acc"} <= set(r)
        if r["task"] == "t2v":
            assert {"motion_acc", "temporal_consistency"} <= set(r)
    fp = rows[0]
    assert fp["psnr"] == 100.0 and fp["avg_w_bits"] is None
    mp = rows[1]
    assert mp["incoherence"]["layers"] and mp["incoherence"]["mean_after"] < mp["incoherence"]["mean_before"]
    assert not fp["incoherence"]["layers"]  # nothing balanced in float
    assert data["environment"]["tiny"] and data["models"]["pixart-emoji-32"]["samples"] == 4
    assert all(r["tiny"] for r in rows)  # a toy run says so in every row and in the title
    md = out.with_suffix(".md").read_text()
    assert "TOY SIZES" in md.splitlines()[0]
    assert "| `viditq-w4a8-mp` |" in md and "Per-layer incoherence" in md and "motion" in md


def test_quality_tiny_class_conditional(standin_c2i, tmp_path):
    """The c2i DiT: one sample per trained class label, class accuracy against the emoji feature net's categories."""
    bench = runpy.run_module("benchmarks.quality", run_name="quality_bench", alter_sys=True)
    out = tmp_path / "quality"
    assert bench["main"](["--models", str(standin_c2i), "--tiny", "--presets", "fp", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())  # the preset rows are model-independent code
    assert [(r["task"], r["preset"]) for r in data["rows"]] == [("c2i", "fp")]
    for r in data["rows"]:
        assert r["finite"] and {"psnr", "ssim", "fd", "cond_acc"} <= set(r) and 0 <= r["cond_acc"] <= 1
    info = data["models"]["dit-emoji-32"]
    assert info["samples"] == 9 and info["prompts"][0] == "Smileys & Emotion" and "Other" not in info["prompts"]
    md = out.with_suffix(".md").read_text()
    assert "## dit-emoji-32 (class-conditional image)" in md and "1 per class label of the 9 trained classes" in md

"""Toy-size benchmark runs (--tiny, fixture models) say so in every JSON row and every title, and
never overwrite measured results (their default files are *_tiny)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_e2e, bench_rotate, quant_report
from benchmarks.common import environment, mark_toy, results_path, title

ENV = {**environment(), "cpu_count": 2, "backend": "xla"}


def test_helpers():
    assert mark_toy([{"a": 1}, {}], True) == [{"a": 1, "tiny": True}, {"tiny": True}]
    assert mark_toy([{}], False) == [{"tiny": False}]
    assert "TOY SIZES (--tiny)" in title("Step", True) and title("Step", False) == "Step"
    assert "TOY SIZES (fixture models)" in title("Report", True, "fixture models")
    assert results_path("r/e2e.json", None, True) == Path("r/e2e_tiny.json")
    assert results_path("r/quality", None, True) == Path("r/quality_tiny")
    assert results_path("r/e2e.json", None, False) == Path("r/e2e.json")
    assert results_path("r/e2e.json", "x.json", True) == Path("x.json")


def test_markdown_titles(tmp_path):
    row = {"model": "pixart [toy size]", "method": "bf16", "tiny": True, "median_ms": 1.0, "speedup_vs_bf16": 1.0,
           "weight_bytes_ratio_vs_bf16": 1.0, "block_linear_bytes_ratio_vs_bf16": 1.0, "rel_l2_vs_bf16_output": None,
           "peak_memory_bytes": None, **ENV}
    bench_e2e.write_md([row], tmp_path / "e2e.md")
    assert "TOY SIZES" in (tmp_path / "e2e.md").read_text().splitlines()[0]
    bench_e2e.write_md([{**row, "tiny": False}], tmp_path / "e2e.md")
    assert "TOY" not in (tmp_path / "e2e.md").read_text()
    rot = {**ENV, "M": 9, "K": 1152, "variant": "stored", "tiny": True, "ms": 0.1}
    assert "TOY SIZES" in bench_rotate.to_markdown([rot]).splitlines()[0]
    rep = {"model": "pixart_alpha_ms", "preset": "fp", "bits": "16", "final_rel_error": 0.0, "final_sqnr_db": None,
           "psnr_db": None, "ssim": None, "mean_step_rel_error": None, "bytes": 1, "bytes_ratio": 1.0,
           "incoherence_before": None, "tiny": True}
    assert "TOY SIZES (fixture models)" in quant_report.to_markdown([rep], {}, ENV).splitlines()[0]

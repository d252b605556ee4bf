"""benchmarks.quality_backends in its tiny mode on a stand-in model: one quantization, every backend, the
per-step denoiser SQNR, the CPU-skip of pallas, the JSON after every row, the per-phase compile / run seconds
(one sampler and one denoiser compile per backend, whatever the batch count), and --merge of two runs' JSON into
one table."""

import json
import math
import runpy


def test_quality_backends_tiny_and_merge(standin_c2i, tmp_path):
    bench = runpy.run_module("benchmarks.quality_backends", run_name="quality_backends_bench", alter_sys=True)
    cpu = tmp_path / "cpu"
    module = bench["main"].__globals__
    written, write = [], module["write"]
    module["write"] = lambda out, data: (written.append([(r["backend"], data["runs"][0]["complete"])
                                                         for r in data["rows"]]), write(out, data))
    try:
        assert bench["main"](["--models", str(standin_c2i), "--tiny", "--backends", "xla", "simulate", "pallas",
                              "--out", str(cpu)]) == 0
    finally:
        module["write"] = write
    # written after every row (the reference backend first), complete after the model's last
    assert written == [[("simulate", False)], [("simulate", False), ("xla", False)],
                       [("simulate", True), ("xla", True)]]
    data = json.loads(cpu.with_suffix(".json").read_text())
    info = data["models"]["dit-emoji-32"]
    phases = {p["phase"]: p for p in info["phases"]}
    assert info["samples"] > info["batch_rows"]  # several sampler calls per backend ...
    for be in ("simulate", "xla"):  # ... one compile of its sampler
        assert phases[f"sample {be}"]["compiles"] == 1
        assert "jit(sample_loop)" in phases[f"sample {be}"]["slowest_compiles_s"]
    # the reference's SQNR: the float and the simulate denoiser, the error sums, the jitter; then one denoiser each
    assert phases["sqnr simulate"]["compiles"] <= 4 and phases["sqnr xla"]["compiles"] == 1
    assert all(0 <= p["compile_s"] <= p["wall_s"] for p in phases.values())
    rows = data["rows"]
    assert [(r["preset"], r["backend"]) for r in rows] == [("viditq-w8a8", "simulate"), ("viditq-w8a8", "xla")]
    assert any("`pallas` skipped" in n for n in data["notes"])  # no GPU here: skipped with a note
    sim, xla = rows
    steps = data["models"]["dit-emoji-32"]["sampler"]["steps"]
    for r in rows:
        assert r["finite"] and r["tiny"] and {"device", "jax_version", "date"} <= set(r)
        assert r["steps"] == list(range(steps)) and len(r["sqnr_db"]) == steps
        assert r["sqnr_min"] == min(r["sqnr_db"]) == r["sqnr_db"][r["sqnr_worst_step"]]
        assert math.isfinite(r["sqnr_mean"]) and r["sqnr_mean"] > 10 and r["psnr"] < 100  # close to FP, not equal
    # the integer GEMM computes what the fake quantization does, up to float rounding
    assert xla["reference_backend"] == "simulate" and "max_abs_diff_vs_ref" not in sim
    assert xla["max_abs_diff_vs_ref"] < 0.05 and xla["sqnr_vs_ref_mean"] > 40
    assert abs(xla["sqnr_mean"] - sim["sqnr_mean"]) < 1.0

    # the GPU half comes from another machine: here the same JSON as if run there with the kernels
    gpu = json.loads(json.dumps(data))
    gpu["runs"][0]["device"] = "NVIDIA H100 80GB HBM3"
    gpu["rows"] = [{**r, "device": "NVIDIA H100 80GB HBM3", "backend": {"xla": "pallas"}.get(r["backend"], r["backend"])}
                   for r in gpu["rows"]]
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    merged = tmp_path / "merged"
    assert bench["main"](["--merge", str(cpu.with_suffix(".json")), str(tmp_path / "gpu.json"),
                          "--out", str(merged)]) == 0
    m = json.loads(merged.with_suffix(".json").read_text())
    assert [(r["backend"], r["device"]) for r in m["rows"]] == [
        ("simulate", "cpu"), ("xla", "cpu"), ("simulate", "NVIDIA H100 80GB HBM3"), ("pallas", "NVIDIA H100 80GB HBM3")]
    md = merged.with_suffix(".md").read_text()
    assert "TOY SIZES" in md.splitlines()[0] and "| `viditq-w8a8` | `pallas` | NVIDIA H100" in md
    assert "`pallas` on NVIDIA H100 80GB HBM3 vs `simulate` on cpu: PSNR" in md and "Per-step denoiser SQNR" in md

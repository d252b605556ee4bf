"""bench_peers on CPU at toy size: the diffusers row is measured, a missing peer library is a row, not a crash."""

import json

import pytest

pytest.importorskip("diffusers")

from benchmarks import bench_peers  # noqa: E402


def test_peers_tiny_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_peers, "project_bf16_ms", lambda iters, tiny: 2.0)
    monkeypatch.setitem(__import__("sys").modules, "torchao", None)  # as on a machine without torchao
    out = tmp_path / "peers.json"
    rows = bench_peers.run(["eager_bf16", "compile_int8dq"], iters=1, budget_s=600, tiny=True, out=out)
    eager, int8 = rows
    assert eager["median_ms"] > 0 and eager["ratio_vs_project_bf16"] == pytest.approx(2.0 / eager["median_ms"], abs=1e-3)
    assert "torchao" in int8["not_measured"] and eager["tiny"] is True
    assert json.loads(out.read_text())[0]["method"] == "eager_bf16"
    assert "TOY SIZES" in out.with_suffix(".md").read_text()


def test_compile_scope():
    """The torchao forms compile each transformer block (regional: one graph for the identical blocks), the bf16
    anchor the whole model; an explicit scope applies to every compile_* form; the compile is lazy (no run here)."""
    assert bench_peers.compile_scope("compile_bf16") == "model"
    assert bench_peers.compile_scope("compile_int8dq") == bench_peers.compile_scope("compile_fp8row") == "blocks"
    assert bench_peers.compile_scope("eager_bf16") == "" and bench_peers.compile_scope("compile_bf16", "blocks") == "blocks"
    model = bench_peers.build_peer("compile_bf16", bench_peers.peer_config(tiny=True), "cpu", scope="blocks")
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in model.transformer_blocks)


def test_project_bf16_from_e2e(tmp_path):
    """--project-bf16-from: the PixArt bf16 row of a bench_e2e JSON of the same run; a file without one is named."""
    e2e = tmp_path / "e2e.json"
    e2e.write_text(json.dumps({"rows": [
        {"model": "STDiT-XL/2", "method": "bf16", "median_ms": 130.0},
        {"model": "PixArt-XL/2 1024px", "method": "viditq-w8a8", "median_ms": 31.0},
        {"model": "PixArt-XL/2 1024px", "method": "bf16", "median_ms": 34.5}]}))
    assert bench_peers.bf16_from_e2e(e2e) == 34.5
    e2e.write_text(json.dumps([{"model": "pixart [toy size]", "method": "bf16", "median_ms": 1.5}]))
    assert bench_peers.bf16_from_e2e(e2e) == 1.5  # the toy run's name
    e2e.write_text(json.dumps([{"model": "STDiT-XL/2", "method": "bf16", "median_ms": 130.0}]))
    with pytest.raises(SystemExit, match="e2e.json: no PixArt bf16 row"):
        bench_peers.bf16_from_e2e(e2e)


def test_isolated_form_keeps_the_budget():
    """--isolate: a form runs in a child process; one that outlives what is left of the budget is killed and becomes a
    not-measured row saying so (a compile that runs on no longer takes the whole run with it)."""
    row = bench_peers.measure_form_isolated("eager_bf16", 1, True, None, timeout_s=0.5)
    assert set(row) == {"not_measured"} and "0 s left of the time budget (killed)" in row["not_measured"]
    row = bench_peers.measure_form_isolated("eager_bf16", 1, True, None, timeout_s=300)
    assert row["median_ms"] > 0 and row["compile_s"] >= 0


def test_project_bf16_step_in_a_child():
    """The project's own bf16 step runs in a child process (bench_e2e, toy size here) and comes back as its median."""
    assert bench_peers.project_bf16_ms(1, tiny=True) > 0

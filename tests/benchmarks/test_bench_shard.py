"""benchmarks/bench_shard.py on toy sizes (8 simulated CPU devices): the float32 equality-check variant,
which also times the step: a row per mesh with its scaling numbers and sharded-vs-single error, merged
into the results file and its markdown."""

from __future__ import annotations

import json

import jax
import pytest

from benchmarks import bench_shard

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: tests/conftest.py")


def test_bench_shard_tiny(tmp_path):
    out = tmp_path / "shard.json"
    out.write_text(json.dumps([{"case": "other", "variant": "bf16", "mesh": "1 device", "strategy": "-",
                                "devices_total": 8, "tiny": True, "model": "kept", "median_ms": 1.0, "speedup": 1.0,
                                "scaling_efficiency": 1.0, "memory_per_device_bytes": None}]))
    argv = ["--tiny", "--cases", "pixart-2048", "--check", "--meshes", "data=2,seq=4", "--strategies", "ulysses",
            "--iters", "1", "--out", str(out)]
    assert bench_shard.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["case"], r["variant"], r["mesh"]) for r in rows] == [
        ("other", "bf16", "1 device"), ("pixart-2048", "fp32", "1 device"), ("pixart-2048", "fp32", "data=2,seq=4")]
    single, sharded = rows[1:]
    assert all(r["tiny"] and r["devices_total"] == 8 and r["jax_version"] == jax.__version__ for r in rows[1:])
    assert single["devices"] == 1 and sharded["devices"] == 8 and sharded["median_ms"] > 0
    assert sharded["scaling_efficiency"] == pytest.approx(sharded["speedup"] / 8, abs=1e-3)
    assert sharded["passed"] and sharded["max_rel_err"] <= bench_shard.CHECK_RTOL
    md = out.with_suffix(".md").read_text()
    assert "TOY SIZES" in md.splitlines()[0] and "| kept | bf16 | 1 device |" in md
    assert "| PixArt-XL/2 [toy size, uneven] | 2 | data=2,seq=4 | ulysses |" in md and "| yes |" in md

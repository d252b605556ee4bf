"""benchmarks.qattn_capture: q, k, v of every attention call captured at the seam (spatial, cross, temporal)
with their module paths, the quantized-attention record vs float attention per (sample, head), the seam left as
it was; and the --tiny run end to end on the stand-in DiT folder."""

import json
import runpy

import jax
import numpy as np

from models import attention as seam
from tests.fixture_models import stdit3_one_block


def _bench():
    return runpy.run_module("benchmarks.qattn_capture", run_name="qattn_capture_bench", alter_sys=True)


def test_capture_every_kind_and_compare():
    qc = _bench()
    model, params, batch = stdit3_one_block(4)
    before = {k: seam.implementation(k) for k in seam.KINDS}
    fn, calls = qc["capture_attention"](model)
    captured = fn(params, batch)
    assert {k: seam.implementation(k) for k in seam.KINDS} == before  # the seam is restored
    kinds = {kind: layer for layer, kind in calls}
    assert set(kinds) == {"self", "cross", "temporal"} and len(calls) == len(captured)
    assert all(layer.startswith(("spatial_blocks_0", "temporal_blocks_0")) for layer, _ in calls), calls
    # a record that IS float attention gives cosine 1; the int8 record is close to it, not equal
    q, k, v, mask = captured[[kind for _, kind in calls].index("cross")]
    assert mask is not None and q.ndim == 4
    exact = type("Float", (), {"attend": staticmethod(lambda q, k, v, m, kind: seam.reference_attention(q, k, v, m))})
    cos, rel = qc["compare_call"](exact, q, k, v, mask, "cross")
    assert cos.shape == (q.shape[0], q.shape[2]) and np.allclose(cos, 1.0, atol=1e-6) and rel.max() < 1e-5

    m = qc["measure"](model, params, [batch], progress=False)
    assert set(m["settings"]) == set(qc["PRESETS"])
    assert all(ly.endswith("attn") and "cross" not in ly for ly in m["quantized_layers"]["viditq-w8a8-qattn"])
    rows, detail = qc["summarize"](m, "stdit3")
    assert {(r["kind"], r["preset"]) for r in rows} == {(k, p) for k in kinds for p in qc["PRESETS"]}
    for r in rows:
        assert 0.99 < r["cos_min"] <= r["cos_p1"] <= r["cos_mean"] < 1.0 and 0 < r["rel_l2_mean"] <= r["rel_l2_max"]
        assert r["n"] == r["layers"] * r["timesteps"] * r["rows_per_call"] * r["heads"]
    bf16 = {r["kind"]: r["rel_l2_mean"] for r in rows if r["preset"] == "viditq-w8a8-qattn"}
    fp8 = {r["kind"]: r["rel_l2_mean"] for r in rows if r["preset"] == "viditq-w8a8-qattn-fp8pv"}
    assert all(bf16[k] < fp8[k] for k in bf16)  # FP8 P·V adds error on top of the int8 Q·Kᵀ
    assert len(detail) == len(calls) * len(qc["PRESETS"])


def test_tiny_run_writes_results(standin_c2i, tmp_path):
    qc = _bench()
    out = tmp_path / "qc"
    assert qc["main"](["--models", str(standin_c2i), "--tiny", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    env = data["environment"]
    assert env["tiny"] and env["jax_version"] == jax.__version__ and env["date"]
    (name, info), = data["models"].items()
    assert len(info["steps"]) == 2 and info["cfg_rows"] == 2
    assert [(r["kind"], r["preset"]) for r in data["rows"]] == [("self", p) for p in qc["PRESETS"]]
    md = out.with_suffix(".md").read_text()
    assert "TOY SIZES" in md and name in md and "spatial self" in md

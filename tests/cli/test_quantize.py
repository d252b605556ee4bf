"""``vidq quantize``: converted folder -> calibrated, quantized orbax folder (integers stay integers on
disk; a timestep-segment plan's switching layers too), loaded back with vidq_jax.checkpoint.load_quantized."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from vidq_jax.cli import main


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from conversion.fixtures import find_cases

    case = next((c for c in find_cases() if c.name == "pixart_alpha_ms"), None)
    if case is None:
        pytest.skip("pixart_alpha_ms fixture not available")
    out = tmp_path_factory.mktemp("cvt") / "pixart"
    assert main(["convert", "--arch", case.arch, "--config", json.dumps(case.manifest["config"]), str(case.checkpoint),
                 str(out)]) == 0
    return out


def test_quantize_verb_round_trip(converted, tmp_path, capsys):
    import orbax.checkpoint as ocp

    from vidq_jax.checkpoint import load_model
    from vidq_jax.quant import QuantizedWeight
    from vidq_jax.checkpoint import disk_bytes, load_quantized

    from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
    from vidq_jax.quant.segmented import SegmentedWeight

    out = tmp_path / "q"
    plan = MixedPrecisionPlan("mlp-w4-late", 2, (0, 1), (BitsRule(r"(^|/)mlp/", 4, segments=(1,)),))
    rc = main(["quantize", str(converted), str(out), "--preset", "viditq-w8a8", "--calib-prompts", "1", "--steps", "2",
               "--plan", plan.to_json()])
    assert rc == 0
    msg = capsys.readouterr().out
    assert "on disk" in msg and "smaller" in msg
    meta = json.loads((out / "model.json").read_text())
    assert meta["quantization"]["preset"] == "viditq-w8a8"
    assert MixedPrecisionPlan.from_dict(meta["quantization"]["plan"]) == plan
    # integers stay integers on disk: the checkpoint restores (without a target) int8 payloads
    raw = ocp.StandardCheckpointer().restore(out / "params")
    qv = raw["blocks_0"]["attn"]["qkv"]["kernel"]["qvalue"]
    assert np.asarray(qv).dtype == np.int8
    # data bytes: the int8 model is well under the float one
    assert disk_bytes(out / "params" / "ocdbt.process_0") < 0.75 * disk_bytes(converted / "params" / "ocdbt.process_0")
    model, q, _ = load_quantized(out)
    rec = q["blocks_0"]["attn"]["qkv"]["kernel"]
    assert isinstance(rec, QuantizedWeight) and rec.hadamard_signs is not None
    assert rec.layer.backend == "auto" and rec.backend == "xla"  # the CLI default, resolved on CPU
    mlp = q["blocks_1"]["mlp"]["fc2"]["kernel"]  # W8 in segment 0, W4 in segment 1
    assert isinstance(mlp, SegmentedWeight) and [v.w_bits for v in mlp.variants] == [8, 4]
    np.testing.assert_array_equal(mlp.segment_variant, [0, 1])
    _, fp, _ = load_model(converted)
    batch = model.init_inputs(batch=2)
    batch["x"] = jax.random.normal(jax.random.PRNGKey(0), batch["x"].shape)
    apply = jax.jit(model.apply)  # one compile per tree: op-by-op the quantized model compiles every op
    y_fp = np.asarray(apply({"params": fp}, **batch))
    y_q = np.asarray(apply({"params": q}, **batch))
    assert np.abs(y_q - y_fp).max() < 0.05 * np.abs(y_fp).max()


def test_quantize_verb_errors(converted, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "model.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(converted), str(tmp_path / "o"), "--preset", "w3a3"])


def test_top_level_api_is_lazy_and_torch_free():
    import subprocess
    import sys

    code = ("import sys, vidq_jax; assert 'vidq_jax.quant' not in sys.modules; "
            "q = vidq_jax.quantize_params; assert 'torch' not in sys.modules; print(vidq_jax.QuantConfig.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "QuantConfig"

"""`vidq` command line: convert round trip and error reporting."""

import json

import jax
import numpy as np
import pytest

from conversion.fixtures import find_cases, run_case
from vidq_jax.checkpoint import load_model
from vidq_jax.cli import main


def _case(arch):
    for c in find_cases():
        if c.arch == arch:
            return c
    pytest.skip(f"no {arch} fixture")


@pytest.mark.parametrize("arch", ["pixart-alpha", "pixart-diffusers", "stdit", "stdit3"])
def test_convert_writes_loadable_folder(tmp_path, arch, capsys):
    case = _case(arch)
    out = tmp_path / "model"
    cfg = json.dumps(case.manifest["config"])  # tiny fixtures use non-default positional scales
    assert main(["convert", "--arch", arch, "--config", cfg, str(case.checkpoint), str(out)]) == 0
    assert "converted" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == arch and meta["model"] == {"stdit": "STDiT", "stdit3": "STDiT3"}.get(arch, "PixArt")
    model, params, _ = load_model(out)
    _, err = run_case(case, model, params)
    assert err <= case.tolerance


def test_convert_bf16(tmp_path):
    case = _case("pixart-alpha")
    out = tmp_path / "m"
    assert main(["convert", "--arch", "pixart-alpha", "--dtype", "bf16", str(case.checkpoint), str(out)]) == 0
    _, params, meta = load_model(out)
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree_util.tree_leaves(params))
    assert meta["param_bytes"] * 2 == pytest.approx(sum(np.asarray(x, np.float32).nbytes for x in jax.tree_util.tree_leaves(params)))


def test_convert_bad_checkpoint_exit_code(tmp_path, capsys):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"\x00" * 100)
    assert main(["convert", "--arch", "pixart-alpha", str(bad), str(tmp_path / "o")]) == 2
    assert "x.pth" in capsys.readouterr().err


def test_bench_tiny_writes_tables(tmp_path):
    assert main(["bench", "--only", "e2e", "--tiny", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "e2e.json").read_text())
    assert {r["method"] for r in rows} == {"bf16", "w8a8", "w4a8"} and all("speedup_vs_bf16" in r for r in rows)

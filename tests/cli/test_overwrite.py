"""``vidq convert`` / ``vidq quantize`` never clobber: a non-empty output folder needs ``--overwrite``
(which keeps the user's own files), the input is never the output, Ctrl-C is one line; ``vidq --version``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
import pytest

from vidq_jax.checkpoint import load_model
from vidq_jax.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case():
    from conversion.fixtures import find_cases

    found = next((c for c in find_cases() if c.arch == "pixart-diffusers"), None)
    if found is None:
        pytest.skip("no pixart-diffusers fixture")
    return found


def _convert_argv(case, out, *extra):
    return ["convert", "--arch", case.arch, "--config", json.dumps(case.manifest["config"]), str(case.checkpoint),
            str(out), *extra]


def _leaves(folder):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(load_model(folder)[1])]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_convert_needs_overwrite_and_keeps_foreign_files(case, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(_convert_argv(case, out)) == 0
    before = _leaves(out)
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_convert_argv(case, out, "--dtype", "bf16")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "--overwrite" in err
    _assert_same(_leaves(out), before)
    assert main(_convert_argv(case, out, "--dtype", "bf16", "--overwrite")) == 0
    assert all(x.dtype == jax.numpy.bfloat16 for x in _leaves(out))
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == ["model.json", "notes.txt", "params"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_input_is_never_the_output(case, tmp_path, capsys, monkeypatch):
    src = shutil.copytree(case.checkpoint, tmp_path / "transformer")
    assert main(["convert", "--arch", case.arch, str(src), str(src), "--overwrite"]) == 2
    assert "the output is the input" in capsys.readouterr().err
    model = tmp_path / "m"
    assert main(_convert_argv(case, model)) == 0
    before = _leaves(model)
    (tmp_path / "alias").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    for out in (str(model), "alias", "./m/", "../" + tmp_path.name + "/m"):
        capsys.readouterr()
        assert main(["quantize", str(model), out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the output is the input" in err
    _assert_same(_leaves(model), before)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"vidq {version('vidq-jax')}\n"


_CHILD = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner started in the background ignores SIGINT
from vidq_jax import checkpoint
from vidq_jax.cli import main
def reached(step):
    if step == "linked":  # the new folder is complete, the old one not yet replaced
        os.kill(os.getpid(), signal.SIGINT)
checkpoint._reached = reached
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_is_one_line_and_keeps_the_model(case, tmp_path):
    out = tmp_path / "m"
    assert main(_convert_argv(case, out)) == 0
    before = _leaves(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, *_convert_argv(case, out, "--dtype", "bf16", "--overwrite")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "vidq: interrupted" and "Traceback" not in proc.stderr
    _assert_same(_leaves(out), before)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []

"""Every ``vidq`` user error is ONE stderr line naming the culprit, exit status 2 (issue 13): missing or
unreadable files, bad JSON, non-writable outputs, wrong ``--cond`` contents, bad plans, out-of-range
counts, options that do not apply. ``--debug`` / ``VIDQ_DEBUG=1`` add the traceback; an unexpected
exception is one line calling it a bug. In-process (``main(argv)``) except two subprocess checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidq_jax.cli import main

REPO = Path(__file__).resolve().parents[2]
L, C = 8, 32  # the STDiT3 fixture's caption length and channels


def run_cli(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``vidq argv`` in this process (argparse exits included)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(argv, capsys, *needles):
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Damaged and valid inputs: ``{name: path}``."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, L, C)).astype(np.float32)
    paths = {"dir": d, "text": d / "notes.txt", "npy": d / "y.npy", "no_y": d / "no_y.npz", "y_shape": d / "shape.npz",
             "nan": d / "nan.npz", "unknown": d / "unknown.npz", "mask": d / "mask.npz", "good": d / "good.npz",
             "trunc": d / "trunc.npz", "plan_bad": d / "bad.json", "plan_list": d / "list.json",
             "plan_seg": d / "seg.json"}
    paths["text"].write_text("not a model\n")
    np.save(paths["npy"], y)
    np.savez(paths["no_y"], x=y)
    np.savez(paths["y_shape"], y=y[:, :, :5])
    np.savez(paths["nan"], y=np.where(np.arange(C) == 3, np.nan, y))
    np.savez(paths["unknown"], y=y, captions=y)
    np.savez(paths["mask"], y=y, mask=np.zeros((2, L), np.int32))
    np.savez(paths["good"], y=y, mask=np.ones((2, L), np.int32))
    paths["trunc"].write_bytes(paths["good"].read_bytes()[:300])
    paths["plan_bad"].write_text('{"name": "x", ')
    paths["plan_list"].write_text("[1, 2]")
    paths["plan_seg"].write_text(json.dumps({"name": "p", "num_steps": 2, "boundaries": [0, 1],
                                             "rules": [{"pattern": "mlp", "w_bits": 4, "segments": [5]}]}))
    return paths


def _quantize(f, s3, out, *extra):
    return ["quantize", s3, out, *extra]


# (id, argv builder (files, stdit3 folder, fresh output path), substrings the line must contain)
QUANTIZE_ERRORS = [
    ("missing-model", lambda f, s3, o: ["quantize", f["dir"] / "nope", o], ["MODEL_DIR", "nope", "model.json"]),
    ("model-is-file", lambda f, s3, o: ["quantize", f["text"], o], ["MODEL_DIR", "notes.txt"]),
    ("out-under-file", lambda f, s3, o: ["quantize", s3, f["text"] / "q"], ["OUT_DIR", "is a file"]),
    ("out-not-empty", lambda f, s3, o: ["quantize", s3, f["dir"]], ["--overwrite"]),
    ("out-is-input", lambda f, s3, o: ["quantize", s3, s3, "--overwrite"], ["the output is the input"]),
    ("steps-0", lambda f, s3, o: _quantize(f, s3, o, "--steps", "0"), ["--steps", "[1, 1000]", "got 0"]),
    ("steps-text", lambda f, s3, o: _quantize(f, s3, o, "--steps", "ten"), ["--steps", "'ten'"]),
    ("calib-prompts-neg", lambda f, s3, o: _quantize(f, s3, o, "--calib-prompts", "-1"), ["--calib-prompts"]),
    ("every-k-0", lambda f, s3, o: _quantize(f, s3, o, "--every-k", "0"), ["--every-k", ">= 1"]),
    ("guidance-nan", lambda f, s3, o: _quantize(f, s3, o, "--guidance", "nan"), ["--guidance", "finite"]),
    ("guidance-inf", lambda f, s3, o: _quantize(f, s3, o, "--guidance", "inf"), ["--guidance", "finite"]),
    ("num-frames-0", lambda f, s3, o: _quantize(f, s3, o, "--num-frames", "0"), ["--num-frames"]),
    ("sampler", lambda f, s3, o: _quantize(f, s3, o, "--sampler", "euler"), ["--sampler", "rflow"]),
    ("preset", lambda f, s3, o: _quantize(f, s3, o, "--preset", "w3a3"), ["--preset", "viditq-w8a8"]),
    ("plan-inline", lambda f, s3, o: _quantize(f, s3, o, "--plan", "{oops"), ["--plan (inline JSON)", "not valid JSON"]),
    ("plan-missing", lambda f, s3, o: _quantize(f, s3, o, "--plan", f["dir"] / "p.json"), ["--plan", "p.json",
                                                                                            "cannot read"]),
    ("plan-truncated", lambda f, s3, o: _quantize(f, s3, o, "--plan", f["plan_bad"]), ["bad.json", "not valid JSON"]),
    ("plan-list", lambda f, s3, o: _quantize(f, s3, o, "--plan", f["plan_list"]), ["list.json", "JSON object"]),
    ("plan-keys", lambda f, s3, o: _quantize(f, s3, o, "--plan", "{}"), ["--plan", "missing key 'name'"]),
    ("plan-segments", lambda f, s3, o: _quantize(f, s3, o, "--plan", f["plan_seg"]), ["seg.json", "out of range"]),
    ("plan-published", lambda f, s3, o: _quantize(f, s3, o, "--plan", "opensora1-w4a8", "--steps", "3"),
     ["--plan opensora1-w4a8", "--steps", "multiple of 4"]),
    ("cond-missing", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["dir"] / "c.npz"), ["--cond", "c.npz",
                                                                                          "no such file"]),
    ("cond-text", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["text"]), ["--cond", "notes.txt", ".npz"]),
    ("cond-npy", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["npy"]), ["--cond", "y.npy", ".npz"]),
    ("cond-truncated", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["trunc"]), ["--cond", "trunc.npz"]),
    ("cond-no-y", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["no_y"]), ["no_y.npz", "'y'", f"(P, {L}, {C})"]),
    ("cond-y-shape", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["y_shape"]), ["shape.npz", "(2, 8, 5)"]),
    ("cond-nan", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["nan"]), ["nan.npz", "'y'", "NaN"]),
    ("cond-unknown", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["unknown"]), ["unknown.npz", "captions",
                                                                                    "allowed"]),
    ("cond-mask", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["mask"]), ["mask.npz", "'mask'", "valid token"]),
    ("cond-too-few", lambda f, s3, o: _quantize(f, s3, o, "--cond", f["good"], "--calib-prompts", "3"),
     ["--calib-prompts 3", "holds 2 prompt"]),
]


@pytest.mark.parametrize("argv, needles", [pytest.param(b, n, id=i) for i, b, n in QUANTIZE_ERRORS])
def test_quantize_user_errors_are_one_line(argv, needles, files, converted, tmp_path, capsys):
    out = tmp_path / "out"
    assert_one_line_error(argv(files, converted("stdit3"), out), capsys, *needles)
    assert not out.exists()


def test_other_verbs_user_errors_are_one_line(files, converted, tmp_path, capsys):
    pixart = converted("pixart-diffusers")
    text, missing = files["text"], tmp_path / "nowhere"
    cases = [
        (["convert", "--arch", "stdit3", missing, tmp_path / "o"], ["CHECKPOINT", "nowhere", "no such file"]),
        (["convert", "--arch", "stdit4", text, tmp_path / "o"], ["--arch", "stdit3"]),
        (["convert", "--arch", "stdit3", text, tmp_path / "o", "--dtype", "int3"], ["--dtype", "bf16"]),
        (["convert", "--arch", "stdit3", text, tmp_path / "o", "--config", "{depth: 2}"], ["--config", "JSON"]),
        (["convert", "--arch", "stdit3", text, tmp_path / "o", "--config", missing], ["--config", "cannot read"]),
        (["convert", "--arch", "stdit3", text, tmp_path / "o", "--config", files["plan_list"]], ["JSON object"]),
        (["convert", "--arch", "stdit3", text, text / "o"], ["OUT_DIR", "is a file"]),
        (["quantize", pixart, tmp_path / "o", "--num-frames", "4"], ["--num-frames", "image model"]),
        (["quantize", pixart, tmp_path / "o", "--height", "3"], ["--height 3", "multiples of the patch size"]),
        (["sample", "--prompt", "x", "--scale", "0"], ["--scale", "[1, 64]"]),
        (["sample", "--prompt", "x", "--seed", "-1"], ["--seed"]),
        (["sample", "--prompt", "x", "--model", missing], ["nowhere", "model.json"]),
        (["sample", "--prompt", "x", "--model", "t2i", "--num-frames", "4"], ["--num-frames", "image model"]),
        (["sample", "--prompt", "x", "--model", "t2v", "--out", tmp_path / "a.png"], ["--out", ".gif"]),
        (["sample", "--prompt", "x", "--model", "t2i", "--out", text / "a.png"], ["--out", "is a file"]),
        (["demo", "--images", "0"], ["--images"]),
        (["demo", "--videos", "-1"], ["--videos"]),
        (["demo", "--models-dir", tmp_path], ["pixart-emoji-32", "model.json"]),
        (["demo", "--out", text / "d"], ["--out", "is a file"]),
        (["bench", "--out", text / "b"], ["--out", "is a file"]),
        ([], ["verb"]),
        (["frobnicate"], ["frobnicate"]),
    ]
    for argv, needles in cases:
        assert_one_line_error(argv, capsys, *needles)


def test_already_quantized_and_stdit3_sizes(converted, tmp_path, capsys):
    """`vidq quantize` works on STDiT3 (the family derives the rectified-flow pixel sizes), with the
    sampling knobs; a quantized folder is refused as input."""
    from vidq_jax.checkpoint import load_model

    s3, out = converted("stdit3"), tmp_path / "q"
    rc, stdout, err = run_cli(["quantize", s3, out, "--calib-prompts", "1", "--steps", "2",
                               "--num-frames", "5", "--height", "6", "--width", "4", "--guidance", "3"], capsys)
    assert rc == 0, err
    assert "1 calibration batches of rflow 2 steps, CFG 3 (height=48, width=32, num_frames=17) runs on 5x6x4x4" in stdout
    model, params, meta = load_model(out)
    assert meta["quantization"]["preset"] == "viditq-w8a8"
    assert_one_line_error(["quantize", out, tmp_path / "again"], capsys, "already quantized")


def test_debug_shows_the_traceback(files, converted, tmp_path, capsys, monkeypatch):
    argv = ["quantize", converted("stdit3"), tmp_path / "o", "--cond", files["no_y"]]
    for how in ("flag", "flag-after-verb", "env"):
        monkeypatch.setenv("VIDQ_DEBUG", "1" if how == "env" else "0")
        full = {"flag": ["--debug", *argv], "flag-after-verb": [*argv, "--debug"], "env": argv}[how]
        rc, _, err = run_cli(full, capsys)
        assert rc == 2 and err.startswith("Traceback") and "VidqError" in err, (how, err)
        assert err.splitlines()[-1].startswith("vidq quantize: --cond"), err


def test_a_bug_is_one_line_asking_for_debug(monkeypatch, tmp_path, capsys):
    from vidq_jax import cli

    def boom(args):
        import jax.numpy as jnp

        return jnp.zeros((2, 3)) @ jnp.zeros((2, 3))  # a shape error from inside JAX: not a user error

    monkeypatch.setattr(cli, "cmd_bench", boom)
    monkeypatch.delenv("VIDQ_DEBUG", raising=False)
    rc, _, err = run_cli(["bench", "--out", tmp_path], capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and "a bug" in err and "--debug" in err, err
    rc, _, err = run_cli(["--debug", "bench", "--out", tmp_path], capsys)
    assert rc == 1 and "Traceback" in err and "a bug" in err.splitlines()[-1]


def test_subprocess_exit_status_and_stderr(converted, tmp_path):
    """The installed entry point's view: exit status 2, one stderr line, no traceback; --debug adds it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "VIDQ_DEBUG": ""}
    argv = [sys.executable, "-m", "vidq_jax.cli", "quantize", str(converted("stdit3")), str(tmp_path / "o"),
            "--plan", str(tmp_path / "missing.json")]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"vidq quantize: --plan {tmp_path / 'missing.json'}: cannot read it (No such "
                                        "file or directory); give a JSON file or inline JSON"], proc.stderr
    proc = subprocess.run([*argv[:3], "--debug", *argv[3:]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr

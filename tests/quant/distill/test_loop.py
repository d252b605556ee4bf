"""The Q-VDiT distillation loop on the fixture STDiT3 (one spatial + one temporal block of its weights):
the loss falls, an interrupted run resumes to the uninterrupted result, the temporal layers get their
per-frame scale, and the distilled params save and load as a quantized folder."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.fixture_models import stdit3_one_block

from vidq_jax.checkpoint import load_model, save_quantized
from vidq_jax.errors import VidqError
from vidq_jax.quant import LayerRule, QuantConfig
from vidq_jax.quant.distill import distill
from vidq_jax.quant.tqe import TQEWeight

FRAMES = 4
# the temporal attention (W4A6, per-frame scale) and one MLP layer (W8A8, GELU) as in the preset, the rest
# float: a small graph to compile on the CI CPU
CONFIG = QuantConfig("qvdit-test", default=None, rules=(
    LayerRule("group:temporal_attn", w_bits=4, a_bits=6, w_method="qvdit"),
    LayerRule("^temporal_blocks_0/mlp/fc1$", w_bits=8, a_bits=8, w_method="qvdit"),
))
KW = dict(config=CONFIG, steps=6, lr=1e-3, scale_lr=1e-6, rank=4, checkpoint_every=2, log_every=1, progress=False, evaluate=False)


@pytest.fixture(scope="module")
def setup():
    return stdit3_one_block(FRAMES)


def test_distill_falls_resumes_saves_and_loads(setup, tmp_path):
    model, params, batch = setup
    ckpt = tmp_path / "ckpt"
    first = distill(model, params, [batch], checkpoint_dir=ckpt, time_limit=0.0, **KW)  # stopped after 1 step
    assert not first.complete and first.steps == 1 and (ckpt / "distill.json").is_file()
    resumed = distill(model, params, [batch], checkpoint_dir=ckpt, **KW)
    assert resumed.complete and resumed.steps == 6 and [h["step"] for h in resumed.history] == list(range(1, 7))
    losses = [h["loss"] for h in resumed.history]
    assert losses[-1] < 0.9 * losses[0], losses  # one batch: the loss of the same batch falls
    straight = distill(model, params, [batch], **KW)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # the temporal layers got M over the 4 latent frames (a rule in the saved recipe); the MLPs did not
    qp = resumed.params
    temporal, mlp = qp["temporal_blocks_0"]["attn"]["qkv"]["kernel"], qp["temporal_blocks_0"]["mlp"]["fc1"]["kernel"]
    assert isinstance(temporal, TQEWeight) and temporal.frame_scale.shape == (FRAMES,)
    assert isinstance(mlp, TQEWeight) and mlp.frame_scale is None and np.any(np.asarray(mlp.beta))
    assert resumed.config.resolve("temporal_blocks_0/attn/proj").tqe_frames == FRAMES
    assert not hasattr(qp["spatial_blocks_0"]["attn"]["qkv"]["kernel"], "quantized_dense")  # float

    out = save_quantized(tmp_path / "q", model, qp, arch="stdit3", config=resumed.config,
                         extra={"distillation": resumed.record()})
    _, loaded, meta = load_model(out)  # restored through the qvdit template (tqe_frames from the recipe)
    assert meta["distillation"]["steps_done"] == 6
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(qp)
    for a, b in zip(jax.tree_util.tree_leaves(qp), jax.tree_util.tree_leaves(loaded)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(VidqError, match=r"other settings \(steps"):
        distill(model, params, [batch], checkpoint_dir=ckpt, **{**KW, "steps": 7})
    with pytest.raises(VidqError, match="no layer with w_method='qvdit'"):
        distill(model, params, [batch], **{**KW, "config": "viditq-w8a8"})


def test_distill_plan_picks_the_steps_of_a_plain_run(setup):
    """``plan`` sees the measured setup / compile / step times after throw-away probe steps, and the run it
    picks is bit for bit the run of ``steps=<picked>`` (the cosine horizon is traced: one compilation)."""
    model, params, batch = setup
    seen = []
    planned = distill(model, params, [batch], plan=lambda t: seen.append(t) or 3, **KW)
    assert planned.steps == planned.settings["steps"] == 3 and planned.complete
    assert set(seen[0]) == {"setup", "compile", "step"} and all(v > 0 for v in seen[0].values())
    straight = distill(model, params, [batch], **{**KW, "steps": 3})
    for a, b in zip(jax.tree_util.tree_leaves(planned.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in planned.history] == [h["loss"] for h in straight.history]
    assert distill(model, params, [batch], plan=lambda t: 10**6, **{**KW, "steps": 2}).steps == 2  # at most steps


def test_cosine_decay_is_optax_bit_for_bit():
    import jax.numpy as jnp
    import optax

    from vidq_jax.quant.distill.loop import cosine_decay, horizon_of

    for steps in (1, 6, 37, 2000):
        count = jnp.arange(steps + 2, dtype=jnp.int32)
        ref = jax.jit(jax.vmap(optax.cosine_decay_schedule(1e-5, steps)))(count)
        got = jax.jit(jax.vmap(lambda c, h: cosine_decay(1e-5, h)(c), in_axes=(0, None)))(count, horizon_of(steps))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))

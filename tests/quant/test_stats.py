"""Calibration statistics by name (vidq_jax.quant.stats): the registry, "absmax" (LayerStats) and
"hessian" (XᵀX), merged over batches."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.layers import Dense
from vidq_jax.quant.stats import STATISTICS, Hessian, LayerStats, collect_stats, make_stats_fn


class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Dense(3, name="out")(jax.nn.gelu(Dense(16, name="inp")(x)))


@pytest.fixture(scope="module")
def setup():
    model = Two()
    params = model.init(jax.random.key(0), jnp.ones((2, 5, 8)))["params"]
    rng = np.random.default_rng(0)
    batches = [{"x": jnp.asarray(rng.standard_normal((2, 5, 8)).astype(np.float32) * (i + 1))} for i in range(3)]
    return model, params, batches


def test_registry_names():
    assert {"absmax", "hessian"} <= set(STATISTICS)
    assert all(s.name == n for n, s in STATISTICS.items())


def test_hessian_and_absmax_over_batches(setup):
    model, params, batches = setup
    stats = collect_stats(model, params, batches, statistics=("hessian",))
    x = np.concatenate([np.asarray(b["x"]).reshape(-1, 8) for b in batches])
    st = stats["inp"]
    assert isinstance(st, LayerStats) and st.rows == 30 and st.calls == 3  # "absmax" is always collected
    np.testing.assert_allclose(st.absmax, np.abs(x).max(0), rtol=1e-6)
    h = st.extra["hessian"]
    assert isinstance(h, Hessian) and h.rows == 30 and h.xtx.shape == (8, 8)
    np.testing.assert_allclose(h.xtx, x.T @ x, rtol=1e-4, atol=1e-3)
    assert stats["out"].extra["hessian"].xtx.shape == (16, 16)
    # the default collects "absmax" only, with the same numbers
    plain = collect_stats(model, params, batches)
    assert plain["inp"].extra == {}
    np.testing.assert_array_equal(plain["inp"].absmax, st.absmax)
    assert (plain["inp"].min, plain["inp"].max, plain["inp"].incoherence_mean) == (st.min, st.max, st.incoherence_mean)


def test_raw_stats_fn_and_unknown_names(setup):
    model, params, batches = setup
    fn, order = make_stats_fn(model, paths=["out"], statistics=("absmax", "hessian"))
    raw = jax.device_get(fn(params, batches[0]))
    assert order == ["out"] and set(raw["out"]) == {"absmax", "hessian"}
    assert int(raw["out"]["absmax"]["rows"]) == 10 and raw["out"]["hessian"]["xtx"].shape == (16, 16)
    with pytest.raises(ValueError, match="unknown calibration statistics.*'hesian'"):
        collect_stats(model, params, batches, statistics=("hesian",))


def test_prenorm_layers_are_calibrated_on_their_normed_input():
    """qkv and fc1 get the pre-LayerNorm stream plus ``prenorm=`` (the Dense seam); their statistics are
    those of ``modulate(layer_norm(x))`` as the blocks computed it — per frame under STDiT3's ``x_mask``."""
    from models.layers import Mlp, SelfAttention, layer_norm, modulate
    from tests.fixture_models import stdit3_one_block

    model, params, batch = stdit3_one_block(frames=3)
    batch = dict(batch, x_mask=jnp.array([[True, False, True], [False, True, True]]))
    normed = {}

    def grab(next_fun, args, kwargs, ctx):  # the inputs of the modules owning qkv / fc1, normed by hand
        if isinstance(ctx.module, (SelfAttention, Mlp)) and kwargs.get("prenorm") is not None:  # not y_proj
            x, (shift, scale) = args[0], kwargs["prenorm"]
            frames = x.reshape(x.shape[0], 3, -1, x.shape[-1])  # (B, T, S, C) with (B, T, 1, C) parameters
            h = modulate(layer_norm(frames), shift, scale).reshape(x.shape)
            normed["/".join(ctx.module.path) + ("/qkv" if isinstance(ctx.module, SelfAttention) else "/fc1")] = h
        return next_fun(*args, **kwargs)

    def forward(p, b):
        with nn.intercept_methods(grab):
            model.apply({"params": p}, **b)
        return normed

    want = jax.jit(forward)(params, batch)
    stats = collect_stats(model, params, [batch], paths=list(want))
    assert len(want) == 4  # spatial and temporal block: attn/qkv, mlp/fc1
    for p, h in want.items():
        np.testing.assert_allclose(stats[p].absmax, np.abs(np.asarray(h)).max((0, 1)), rtol=1e-6, err_msg=p)

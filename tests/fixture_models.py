"""Shared loader of the fixture models used by the quantization, calibration and evaluation tests
(``from tests.fixture_models import fixture_model``)."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _load(name: str):
    from conversion import load_checkpoint
    from conversion.fixtures import find_cases

    case = next((c for c in find_cases() if c.name == name), None)
    if case is None:
        return None
    model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest.get("config"))
    return case, model, params


def fixture_case(name: str):
    """``(case, model, params)`` of fixture case ``name`` (cached); skips when absent."""
    loaded = _load(name)
    if loaded is None:
        pytest.skip(f"{name} fixture not available")
    return loaded


def fixture_model(name: str, n: int = 2):
    """``(model, params, cond, latent_shape)`` of fixture case ``name`` (``n`` prompts); skips the
    calling test when the fixture folder is absent."""
    from conversion.fixtures import sampling_inputs

    case, model, params = fixture_case(name)
    cond, shape = sampling_inputs(case, n)
    return model, params, cond, shape



def stdit3_one_block(frames: int, seed: int = 0):
    """``(model, params, batch)``: the fixture STDiT3 cut to its first spatial and temporal block, and one
    model-input batch of two ``frames``-frame 4x4 latents (``default_rng(seed)``) at timesteps 700 and 300
    with the fixture's conditions (skips when the fixture is absent)."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from models.stdit3 import STDiT3

    model, params, cond, _ = fixture_model("opensora_v1_2_stdit3")
    model = STDiT3(dataclasses.replace(model.config, depth=1))
    params = {k: v for k, v in params.items() if not k.endswith("_1")}
    rng = np.random.default_rng(seed)
    batch = {"x": jnp.asarray(rng.standard_normal((2, frames, 4, 4, model.config.in_channels)), jnp.float32),
             "timestep": jnp.asarray([700.0, 300.0]), **{k: jnp.asarray(v) for k, v in cond.items()}}
    return model, params, batch

def random_pixart(*, input_size: int = 4, hidden_size: int = 72, num_heads: int = 4, seed: int = 0):
    """``(model, params, inputs)``: a one-block PixArt with random float32 weights (``N(0, 1/C_in)``) and a
    batch of two model inputs at timesteps 10 and 700 (all drawn from ``numpy`` ``default_rng(seed)``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from models import pixart

    model = pixart.PixArt(pixart.PixArtConfig(input_size=input_size, hidden_size=hidden_size, depth=1,
                                              num_heads=num_heads, caption_channels=32, model_max_length=8,
                                              micro_condition=False))
    rng = np.random.default_rng(seed)
    inputs = {k: jnp.asarray(rng.standard_normal(v.shape).astype(np.float32)) if k in ("x", "y") else v
              for k, v in model.init_inputs(batch=2).items()}
    inputs["timestep"] = jnp.asarray([10.0, 700.0])
    shapes = jax.eval_shape(model.init, jax.random.key(0), **inputs)["params"]
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(np.float32) / np.sqrt(s.shape[0])), shapes)
    return model, params, inputs

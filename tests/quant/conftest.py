"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from tests.fixture_models import fixture_case


@pytest.fixture(scope="session")
def pixart_batch():
    """``(model, params, batch)``: the PixArt-α fixture model and one recorded model-input batch."""
    from conversion.fixtures import model_inputs

    case, model, params = fixture_case("pixart_alpha_ms")
    batch = {k: jnp.asarray(v) for k, v in model_inputs(case).items()}
    batch["y"] = batch["y"][:, 0] if batch["y"].ndim == 4 else batch["y"]
    return model, params, batch

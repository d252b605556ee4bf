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


"""Fixture-driven parity with the ORIGINAL PyTorch models.

Every folder of ``$VIDQ_FIXTURES`` (default ``../shared/fixtures``) holding a ``manifest.json`` is a
case; implemented archs must match ``outputs.npz`` within the manifest tolerance (relative L2).
Select with ``pytest -k parity``; each test id contains the fixture folder name.
"""

import pytest

from conversion import is_implemented
from conversion.fixtures import find_cases, run_case
from tests.fixture_models import fixture_model

CASES = find_cases()


def test_parity_fixtures_found():
    assert CASES, "no fixture cases found: set VIDQ_FIXTURES to a folder of cases"


@pytest.mark.parity
@pytest.mark.parametrize("case", CASES, ids=[f"parity-{c.name}" for c in CASES])
def test_parity(case):
    if not is_implemented(case.arch):
        pytest.skip(f"arch {case.arch!r} of fixture {case.name} is not implemented")
    _, err = run_case(case)
    assert err <= case.tolerance, f"{case.name}: relative L2 error {err:.3e} > tolerance {case.tolerance:.1e}"


def test_fixture_model_loader():
    model, params, cond, shape = fixture_model("opensora_v1_0_stdit")
    assert shape[0] == 2 and cond["y"].shape[0] == 2 and "blocks_0" in params

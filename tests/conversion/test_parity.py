"""Fixture-driven parity with the ORIGINAL PyTorch models.

Every folder of ``$VIDQ_FIXTURES`` (default ``../shared/fixtures``) holding a ``manifest.json`` is a
case; implemented archs must match ``outputs.npz`` within the manifest tolerance (relative L2), the primary
output and every ``extra_outputs`` entry (e.g. a VAE's encoder mean next to its decoder output).
Select with ``pytest -k parity``; each test id contains the fixture folder name.
"""

import pytest

from conversion import is_implemented
from conversion.fixtures import case_errors, find_cases
from tests.fixture_models import fixture_model

CASES = find_cases()


def test_parity_fixtures_found():
    assert CASES, "no fixture cases found: set VIDQ_FIXTURES to a folder of cases"


@pytest.mark.parity
@pytest.mark.parametrize("case", CASES, ids=[f"parity-{c.name}" for c in CASES])
def test_parity(case):
    if not is_implemented(case.arch):
        pytest.skip(f"arch {case.arch!r} of fixture {case.name} is not implemented")
    errors = case_errors(case)
    bad = {k: e for k, e in errors.items() if not e <= case.tolerance}
    assert not bad, f"{case.name}: relative L2 errors {bad} > tolerance {case.tolerance:.1e}"


def test_fixture_model_loader():
    model, params, cond, shape = fixture_model("opensora_v1_0_stdit")
    assert shape[0] == 2 and cond["y"].shape[0] == 2 and "blocks_0" in params

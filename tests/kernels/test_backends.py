"""Every backend of every kernel op against its reference, on fresh random inputs (tests/kernels/base.py).

Backends without a CPU twin (Mosaic GPU) are marked ``gpu`` and skip off GPU; Pallas-Triton runs in
interpret mode on the CPU; ``auto`` is whatever this machine resolves it to.
"""

from __future__ import annotations

import pytest

from tests.kernels.base import all_cases, check_backend_against_reference


@pytest.mark.parametrize("op,backend", all_cases())
def test_backend_matches_reference(op, backend):
    check_backend_against_reference(op, backend, seed=sum(map(ord, op + backend)))

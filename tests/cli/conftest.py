"""Shared fixtures of the CLI tests: converted fixture model folders (``vidq convert``), made once."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """``converted(arch)`` -> a float model folder converted from the first fixture case of ``arch``
    with ``vidq convert`` (once per session); skips when no such fixture is available."""
    from conversion.fixtures import find_cases
    from vidq_jax.cli import main

    done = {}

    def get(arch: str):
        if arch not in done:
            case = next((c for c in find_cases() if c.arch == arch), None)
            if case is None:
                pytest.skip(f"no {arch} fixture")
            out = tmp_path_factory.mktemp("converted") / arch
            argv = ["convert", "--arch", arch, "--config", json.dumps(case.manifest["config"]), str(case.checkpoint),
                    str(out)]
            assert main(argv) == 0
            done[arch] = out
        return done[arch]

    return get

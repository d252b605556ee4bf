"""Property test over the ``vidq`` argument space (issue 13): flags and values drawn from a small
grammar (valid, out of range, malformed, missing files), run in-process. Every outcome is exit status
0, or exit status 2 with exactly ONE stderr line; never a traceback, never exit 1 (a bug)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.test_errors import C, L, run_cli

# flag -> values: a few malformed ones (argparse refuses them), mostly well-formed values that are out of
# range for this model or point at bad files, and valid ones (a valid run costs seconds, a refusal ms)
SAMPLING = {
    "--calib-prompts": ["1", "3", "0"],
    "--every-k": ["1", "5"],
    "--guidance": ["0", "4.5", "nan"],
    "--num-frames": ["5", "1", "6", "x"],
    "--height": ["4", "7"],
    "--width": ["2", "9"],
    "--sampler": ["ddim", "iddpm", "rflow"],
    "--preset": ["fp", "viditq-w4a8"],
    "--plan": ["{", "[]", "{}", "opensora1-w4a8", "@missing"],
    "--cond": ["@good", "@missing", "@text", "@noy"],
    "--overwrite": None,
}
CONVERT = {
    "--config": ["@config", "{", "[1]", "@missing", "{}"],
    "--dtype": ["bf16", "int3"],
    "--overwrite": None,
}


@pytest.fixture(scope="module")
def world(converted, tmp_path_factory):
    """Paths the grammar's ``@names`` and positionals refer to."""
    from conversion.fixtures import find_cases

    d = tmp_path_factory.mktemp("fuzz")
    case = next(c for c in find_cases() if c.arch == "stdit3")
    (d / "notes.txt").write_text("hello")
    np.savez(d / "good.npz", y=np.ones((2, L, C), np.float32))
    np.savez(d / "noy.npz", x=np.ones(3))
    (d / "full").mkdir()
    (d / "full" / "a").write_text("x")
    return {"@missing": str(d / "missing.json"), "@text": str(d / "notes.txt"), "@good": str(d / "good.npz"),
            "@noy": str(d / "noy.npz"), "@config": json.dumps(case.manifest["config"]), "@ckpt": str(case.checkpoint),
            "@model": str(converted("stdit3")), "@full": str(d / "full"), "@under-file": str(d / "notes.txt" / "o")}


def _flags(table):
    keys = sorted(table)
    return st.lists(st.sampled_from(keys), max_size=4, unique=True).flatmap(
        lambda chosen: st.tuples(*[st.just([k]) if table[k] is None else
                                   st.sampled_from(table[k]).map(lambda v, k=k: [k, v]) for k in chosen]))


quantize = st.tuples(st.just("quantize"), st.sampled_from(["@model", "@model", "@missing", "@text"]),
                     st.sampled_from(["@new", "@new", "@full", "@under-file"]),
                     st.sampled_from(["1", "2", "0"]).map(lambda v: ["--steps", v]), _flags(SAMPLING))
convert = st.tuples(st.just("convert"), st.sampled_from(["stdit3", "pixart-alpha", "dit"]).map(lambda a: ["--arch", a]),
                    st.sampled_from(["@ckpt", "@missing", "@text"]), st.sampled_from(["@new", "@full", "@under-file"]),
                    _flags(CONVERT))
sample = st.tuples(st.just("sample"), st.sampled_from(["x", ""]).map(lambda p: ["--prompt", p]),
                   st.sampled_from(["t2v", "t2i", "@missing", "@text"]).map(lambda m: ["--model", m]),
                   st.sampled_from(["1", "0"]).map(lambda v: ["--steps", v]),
                   _flags({k: SAMPLING[k] for k in ("--num-frames", "--height", "--guidance", "--sampler")}
                          | {"--scale": ["2", "0"], "--seed": ["3", "-1"], "--out": ["@new", "@text"]}))


def _flatten(parts):
    for p in parts:
        yield from (_flatten(p) if isinstance(p, (list, tuple)) else [p])


def _argv(parts, world, new):
    flat = list(_flatten(parts))
    return [new if x == "@new" else world.get(x, x) for x in flat]


@settings(max_examples=20, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=st.one_of(quantize, quantize, convert, sample))
def test_every_outcome_is_success_or_one_line(parts, world, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        argv = _argv(parts, world, str(Path(tmp) / "out"))
        if argv[0] == "sample" and "--out" in argv:
            i = argv.index("--out") + 1
            argv[i] = argv[i] + ".gif"
        rc, _, err = run_cli(argv, capsys)
    assert "Traceback" not in err, (argv, err)
    assert rc == 0 or (rc == 2 and len(err.splitlines()) == 1), (argv, rc, err)

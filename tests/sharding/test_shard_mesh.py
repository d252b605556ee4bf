"""Meshes, placement and the command-line options of sharded runs (vidq_jax/sharding/mesh.py, records.py,
apply.py, cli.py): no model compiles here."""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vidq_jax import sharding
from vidq_jax.sharding import cli as sharding_cli

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: tests/conftest.py")


def test_shard_make_mesh_shapes():
    assert dict(sharding.make_mesh(8, rows=2).shape) == {"data": 2, "seq": 4}  # the CFG pair on data
    assert dict(sharding.make_mesh(8, rows=1).shape) == {"data": 1, "seq": 8}
    assert dict(sharding.make_mesh(8, seq=2).shape) == {"data": 4, "seq": 2}
    assert dict(sharding.as_mesh("seq=4").shape) == {"data": 1, "seq": 4}
    assert dict(sharding.as_mesh({"data": 2}).shape) == {"data": 2, "seq": 1}
    devs = jax.devices()[2:6]
    mesh = sharding.make_mesh(devs, data=2, seq=2)
    assert list(mesh.devices.flat) == devs
    assert sharding.as_mesh(mesh) is mesh
    assert sharding.describe(mesh).startswith("data=2 × seq=2 (4 × ")


@pytest.mark.parametrize("bad,msg", [
    ("data=2,foo=3", "expected comma-separated axis=size"),
    ("data=0", "expected comma-separated axis=size"),
    ("data=2,data=2", "expected comma-separated axis=size"),
    ("", "empty"),
])
def test_shard_parse_mesh_errors(bad, msg):
    with pytest.raises(sharding.MeshError, match=msg):
        sharding.parse_mesh(bad)


def test_shard_mesh_errors_name_the_allowed_values():
    with pytest.raises(sharding.MeshError, match=r"devices=16: this run has 8 device\(s\); choose 1..8"):
        sharding.as_mesh(16)
    with pytest.raises(sharding.MeshError, match=r"mesh data=3 does not fit 8 device\(s\).*data in \[1, 2, 4, 8\]"):
        sharding.make_mesh(8, data=3)
    with pytest.raises(sharding.MeshError, match="strategy 'tree' unknown"):
        sharding.Layout(sharding.as_mesh(2), 2, "tree")
    with pytest.raises(sharding.MeshError, match="placement 'half' unknown"):
        sharding.place_params({}, sharding.as_mesh(2), "half")


def test_shard_place_params_along_n():
    """``shard`` splits the output-feature axis N of every Dense weight (float kernel, bias, a record's
    payload and scales) over all devices; everything else is replicated."""
    from vidq_jax.quant import LayerQuant
    from vidq_jax.quant.record import quantize_weight

    rng = np.random.default_rng(0)
    rec = quantize_weight(rng.standard_normal((16, 24)).astype(np.float32), LayerQuant(w_bits=8, a_bits=8))
    params = {"a": {"kernel": rng.standard_normal((12, 16)).astype(np.float32), "bias": np.zeros(16, np.float32)},
              "q": {"kernel": rec, "bias": np.zeros(24, np.float32)},
              "table": np.ones((6, 16), np.float32)}
    mesh = sharding.as_mesh("data=2,seq=4")
    placed = sharding.place_params(params, mesh, "shard")
    both = ("data", "seq")
    assert placed["a"]["kernel"].sharding.spec == P(None, both)
    assert placed["a"]["bias"].sharding.spec == P(both)
    assert placed["q"]["kernel"].qvalue.sharding.spec == P(both, None)  # (N, K) int8
    assert placed["q"]["kernel"].scale.sharding.spec == P(both)
    assert placed["q"]["bias"].sharding.spec == P(both)
    assert placed["table"].sharding.is_fully_replicated
    rep = sharding.place_params(params, mesh)
    assert all(a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(rep))
    assert np.array_equal(sharding.to_host(placed["a"]["kernel"]), params["a"]["kernel"])


def test_shard_place_inputs_rows_on_data():
    mesh = sharding.as_mesh("data=2,seq=4")
    tree = {"y": np.ones((2, 5, 3), np.float32), "mask": np.ones((1, 5), np.int32), "fps": None, "name": "x"}
    placed = sharding.place(tree, mesh, rows=2)
    assert placed["y"].sharding.spec == P("data")
    assert placed["mask"].sharding.is_fully_replicated  # one row tiled over the batch: replicated
    assert placed["fps"] is None and placed["name"] == "x"


def _args(**kw):
    p = argparse.ArgumentParser()
    sharding_cli.add_arguments(p)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return p.parse_args(argv)


def test_shard_cli_options():
    assert sharding_cli.from_args(_args()).kwargs == {}
    mo = sharding_cli.from_args(_args(devices=8), rows=2)
    assert dict(mo.mesh.shape) == {"data": 2, "seq": 4}
    assert mo.kwargs == {"mesh": mo.mesh, "seq_strategy": "ulysses", "param_placement": "replicate"}
    mo = sharding_cli.from_args(_args(mesh="data=1,seq=4", seq_strategy="ring", param_placement="shard"))
    assert dict(mo.mesh.shape) == {"data": 1, "seq": 4} and mo.strategy == "ring" and mo.placement == "shard"
    assert "on data=1 × seq=4" in mo.describe() and mo.writer
    with pytest.raises(sharding.MeshError, match="--devices 2 and --mesh data=1,seq=4 disagree"):
        sharding_cli.from_args(_args(devices=2, mesh="data=1,seq=4"))

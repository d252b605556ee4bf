"""The family registry (models.families): each family declared once and read by every consumer."""

from __future__ import annotations

import dataclasses
import re

import jax
import pytest

import conversion
from conversion.fixtures import find_cases
from models import build_model
from models.families import (
    ARCHS,
    BLOCK_GROUPS,
    COMPONENT_ARCHS,
    COMPONENTS,
    FAMILIES,
    GROUPS,
    family_named,
    family_of,
    group_of_path,
    owner_of_arch,
)
from vidq_jax.quant.tree import dense_paths


def _tiny(fam):
    cfg = dataclasses.replace(fam.config(), depth=2)
    return fam.build(cfg)


@pytest.fixture(scope="module")
def family_paths():
    """Dense paths of a 2-block model of every family (abstract init, no compute)."""
    out = {}
    for name, fam in FAMILIES.items():
        model = _tiny(fam)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), **m.init_inputs()))["params"]
        out[name] = (model, dense_paths(params))
    return out


def test_every_family_and_component_has_a_converter_and_every_arch_converts():
    assert set(conversion.CONVERTERS) == set(FAMILIES) | set(COMPONENTS)
    assert set(conversion.ARCHS) == set(ARCHS) | set(COMPONENT_ARCHS)
    for arch in conversion.ARCHS:
        assert conversion.is_implemented(arch)
        assert owner_of_arch(arch).arch(arch).name == arch


def test_archs_nobody_declares_are_not_implemented():
    assert conversion.is_implemented("no-such-arch") is False
    for case in find_cases():
        assert conversion.is_implemented(case.arch) == (case.arch in conversion.ARCHS)
    with pytest.raises(conversion.ConversionError, match="unknown arch 'no-such-arch'"):
        conversion.convert_state_dict({}, "no-such-arch")
    with pytest.raises(ValueError, match="unknown arch 'no-such-arch'"):
        owner_of_arch("no-such-arch")


def test_build_model_by_family_or_class_name():
    for fam in FAMILIES.values():
        cfg = fam.config().to_dict()
        assert type(build_model(fam.name, cfg)) is fam.module
        assert type(build_model(fam.module.__name__, cfg)) is fam.module  # as older model.json files store
        assert family_named(fam.module.__name__) is fam
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("Wan", {})


def test_every_dense_layer_is_in_exactly_one_group(family_paths):
    for name, (model, paths) in family_paths.items():
        fam = family_of(model)
        assert fam is FAMILIES[name]
        table = fam.group_table(paths)
        for p in paths:
            hits = [g for g in GROUPS if g != "cross_kv" and re.search(table[g], p)]
            assert len(hits) == 1, (name, p, hits)
            in_block = hits[0] in BLOCK_GROUPS
            assert bool(fam.block_of(p)) == in_block, (name, p)
            assert fam.group_of(p) == (hits[0] if in_block else None)
            # without the family, the registered families agree on every path
            assert group_of_path(p) == fam.group_of(p), (name, p)


def test_groups_of_each_family(family_paths):
    _, pix = family_paths["pixart"]
    _, st = family_paths["stdit"]
    _, st3 = family_paths["stdit3"]
    pixart, stdit, stdit3 = FAMILIES["pixart"], FAMILIES["stdit"], FAMILIES["stdit3"]
    assert not any(pixart.group_of(p) == "temporal_attn" for p in pix)
    assert {p for p in st if stdit.group_of(p) == "temporal_attn"} == {f"blocks_{i}/attn_temp/{n}" for i in (0, 1)
                                                                       for n in ("qkv", "proj")}
    assert {p for p in st3 if stdit3.group_of(p) == "temporal_attn"} == {
        f"temporal_blocks_{i}/attn/{n}" for i in (0, 1) for n in ("qkv", "proj")}
    assert stdit3.block_order(st3) == ["spatial_blocks_0", "temporal_blocks_0", "spatial_blocks_1",
                                       "temporal_blocks_1"]
    assert stdit3.edge_blocks(st3) == "^(spatial_blocks_0|temporal_blocks_1)/"


def test_release_samplers_are_registered():
    from vidq_jax import sampling

    for fam in FAMILIES.values():
        sampling.get(fam.sampler.name)  # raises for an unknown name
        assert fam.sampler.steps > 0 and fam.sampler.guidance_scale >= 1.0

"""Sharded runs of every fixture family on 8 simulated CPU devices (tests/conftest.py): sampling and
calibration statistics vs single device (STDiT3, uneven tokens), the model call of the fixture cases vs
the original PyTorch output (PixArt, STDiT, DiT: the parity tolerance), quantized records vs single
device (STDiT3), and the one-line errors of a mesh that does not divide the work. Compiles are what these
cost on the CI CPU: one block of the fixture models where a comparison needs a single-device run too."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest

from models.families import FAMILIES
from tests.fixture_models import fixture_case
from vidq_jax import calibration, pipeline, sampling, sharding
from vidq_jax.quant import QuantConfig, quantize_params
from vidq_jax.quant.stats import collect_stats

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices: tests/conftest.py")

FAMILY_ARCHS = {a.name for f in FAMILIES.values() for a in f.archs}
RTOL = 1e-5  # float32: per-token layers compute the same rows, attention sums in another blocking


def _inputs(name: str, latent: tuple | None = None, prompts: int = 1, one_block: bool = False):
    from conversion.fixtures import sampling_inputs

    case, model, params = fixture_case(name)
    if case.arch not in FAMILY_ARCHS:
        pytest.skip(f"arch {case.arch} of {name} has no family yet")
    if one_block:  # the first transformer block only (every kind of attention is still there)
        model = type(model)(dataclasses.replace(model.config, depth=1), dtype=model.dtype,
                            param_dtype=model.param_dtype)
        params = {k: v for k, v in params.items() if not re.fullmatch(r"(\w+_)?blocks_[1-9]\d*", k)}
    cond, shape = sampling_inputs(case, prompts)
    shape = shape if latent is None else (prompts, *latent)
    noise = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return model, params, cond, noise


def _close(out, ref, rtol: float = RTOL) -> None:
    out, ref = np.asarray(sharding.to_host(out)), np.asarray(ref)
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def _close_quantized(out, ref) -> None:
    """Quantized records: another summation order (the CPU suite compiles at LLVM level 0, tests/conftest.py)
    moves a value across an int8 rounding boundary now and then, a one-code change of that token's input (1/127
    of its range), so the outputs agree within what a few such flips make (measured: max 2.6e-3, relative L2
    6e-4), far below what a sharding bug does to whole tokens or heads."""
    out, ref = np.asarray(sharding.to_host(out)), np.asarray(ref)
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert err <= 1e-2 and rel <= 2e-3, f"max error {err:.2e} (<= 1e-2), relative L2 {rel:.2e} (<= 2e-3)"


def _cfg_call(model, params, noise, cond, mesh):
    """The model on the CFG batch [cond; uncond] at t=500 with quantized records, single device vs ``mesh``
    (:func:`_close_quantized`)."""
    inputs = sampling.combine_cfg_inputs(cond, pipeline.null_condition(model, params, cond))
    x, t = np.concatenate([noise, noise]), np.full((2 * len(noise),), 500.0, np.float32)
    base = pipeline.apply_fn_for(model)
    ref = jax.jit(base)(params, x, t, **inputs)
    mesh = sharding.as_mesh(mesh)
    out = jax.jit(sharding.sharded_apply_fn(model, base, mesh))(sharding.place_params(params, mesh), x, t, **inputs)
    assert out.sharding.mesh == mesh
    _close_quantized(out, ref)


def test_shard_sampling_calibration_and_statistics_match_single_device():
    """STDiT3, 2 prompts × CFG on data=2 and 3 frames × 15 tokens on seq=4 (uneven: padded): collect()
    samples on the mesh (rectified flow, 2 steps); the batch it records at step 1 (the sampled latent)
    and the statistics pass over it (sequence-parallel attention) equal the single-device ones."""
    model, params, cond, noise = _inputs("opensora_v1_2_stdit3", (3, 6, 10, 4), prompts=2, one_block=True)
    kw = dict(steps=2, first_step=1, prompt_batch=2, latent_shape=noise.shape[1:])
    single = list(calibration.collect(model, params, cond, **kw))
    mesh = sharding.as_mesh("data=2,seq=4")
    sharded = list(calibration.collect(model, params, cond, mesh=mesh, **kw))
    assert [b.name for b in sharded] == [b.name for b in single] and len(single) == 1
    for k, v in single[0].batch.items():
        _close(sharded[0].batch[k], v)
    paths = ["spatial_blocks_0/attn/proj", "temporal_blocks_0/attn/proj", "spatial_blocks_0/cross_attn/proj"]
    s1 = collect_stats(model, params, single, paths=paths)  # the inputs of the attention output projections
    with sharding.activate(mesh):
        s2 = collect_stats(model, params, sharded, paths=paths)
    assert s1.keys() == s2.keys()
    for path in s1:
        _close(s2[path].absmax, s1[path].absmax)


# fixture case -> (mesh, sequence strategy) on the case's own inputs: pure sequence parallel with ring
# attention (PixArt-α, 4 heads, 24 tokens over seq=8), mixed data/sequence with Ulysses over the flat
# frame-major tokens of 3 frames (STDiT: spatial and temporal attention, 4 rows), pure data parallel over
# the 3 rows of the DiT case (class labels)
CASES = {
    "pixart_alpha_ms": ("data=1,seq=8", "ring"),
    "opensora_v1_0_stdit": ("data=2,seq=4", "ulysses"),
    "facebook_dit_xl_style": ("data=3,seq=1", "ulysses"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_model_call_matches_the_original_output(name):
    """The sharded model call reproduces the fixture's PyTorch output within the parity tolerance (as the
    single-device call does in tests/conversion/test_parity.py)."""
    from conversion.fixtures import model_inputs, to_channels_first

    case, model, params = fixture_case(name)
    if case.arch not in FAMILY_ARCHS:
        pytest.skip(f"arch {case.arch} of {name} has no family yet")
    mesh_text, strategy = CASES[name]
    inputs = model_inputs(case)
    x, t = inputs.pop("x"), inputs.pop("timestep")
    mesh = sharding.as_mesh(mesh_text)
    fn = jax.jit(sharding.sharded_apply_fn(model, pipeline.apply_fn_for(model), mesh, strategy=strategy))
    out = fn(sharding.place_params(params, mesh), sharding.place(x, mesh, len(x)), t, **inputs)
    assert out.sharding.mesh == mesh
    ref = case.expected("out")
    got = to_channels_first(np.asarray(sharding.to_host(out)))
    assert float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) <= case.tolerance


def test_shard_quantized_model_call_matches_single_device():
    """STDiT3 W8A8 with quantized self-attention records (xla backend): the Dense and attention records
    run per shard (4 frames on seq=4: frame-local spatial attention, Ulysses temporal attention)."""
    model, params, cond, noise = _inputs("opensora_v1_2_stdit3", (4, 4, 6, 4), one_block=True)
    qparams = quantize_params(params, model=model, config=QuantConfig.preset("w8a8-qattn", backend="xla"))
    _cfg_call(model, qparams, noise, cond, "data=2,seq=4")


def test_shard_mesh_not_dividing_rows_is_one_line_error():
    model, params, cond, noise = _inputs("pixart_alpha_ms")
    msg = r"mesh data=4 does not divide the 2 rows of the model batch \(1 prompt\(s\) × 2 for CFG\); choose data in \[1, 2\]"
    with pytest.raises(sharding.MeshError, match=msg):
        pipeline.sample(model, params, noise, cond, steps=2, mesh="data=4,seq=2")


def test_shard_heads_not_dividing_seq_is_one_line_error():
    model, params, cond, noise = _inputs("pixart_sigma_ms")  # 2 heads
    uncond = {"y": np.zeros_like(cond["y"])}
    with pytest.raises(sharding.MeshError, match=r"2 attention heads over seq=4.*ring"):
        pipeline.sample(model, params, noise, cond, uncond, steps=2, mesh="data=2,seq=4")

"""Timestep-segment mixed-precision plans (vidq_jax.quant.plan): the published Open-Sora 1.0 W4A8-MP
table, the plan format, and ``quantize_params(..., plan=...)`` (= per-segment ``quantize_params`` records)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vidq_jax.quant import QuantConfig, quantize_params, quantized_params_template
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.segmented import FloatKernel, SegmentedWeight
from vidq_jax.quant.tree import dense_kernels

# ---------------------------------------------------------------------------------------------
# The published table (viditq_method.md §5.3), written independently of the plan's rules:
# OpenSora v1.0 STDiT-XL/2 with split q/k/v, 13 linears x 28 blocks = 364 layers, 20 IDDPM steps
# indexed 19 (noisiest) .. 0.
# ---------------------------------------------------------------------------------------------
ORIGINAL_LAYERS = ["attn.q", "attn.k", "attn.v", "attn.proj", "attn_temp.q", "attn_temp.k", "attn_temp.v",
                   "attn_temp.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                   "mlp.fc1", "mlp.fc2"]


def published_weight_bits(block: int, layer: str, index: int) -> int:
    if 15 <= index <= 19:  # range 19-15: all layers W8
        return 8
    if layer.startswith("mlp."):
        return 8
    if index <= 4 and block == 23 and layer.startswith("attn_temp."):  # range 4-0 extra
        return 8
    return 4


def our_path(block: int, layer: str) -> str:
    mod, lin = layer.split(".")
    if lin in ("q", "k", "v"):
        lin = "qkv"  # fused in this package
    return f"blocks_{block}/{mod}/{lin}"


def test_published_opensora_plan_equals_table():
    plan = MixedPrecisionPlan.opensora_v1_w4a8()
    base = QuantConfig.preset("viditq-w4a8")
    layers = [(j, name) for j in range(28) for name in ORIGINAL_LAYERS]
    assert len(layers) == 364
    paths = sorted({our_path(j, n) for j, n in layers}) + ["t_block/1", "final_layer/linear", "y_embedder/y_proj/fc1"]
    table = plan.bits_table(paths, base)
    cfgs = [plan.config_for_segment(base, s) for s in range(plan.num_segments)]
    for step in range(20):
        seg = plan.segment_of_step(step)
        index = 19 - step  # the table's IDDPM index; step 0 is the noisiest
        for j, name in layers:
            p = our_path(j, name)
            assert table[p][seg] == published_weight_bits(j, name, index), (p, step)
            assert cfgs[seg].resolve(p).a_bits == 8
        for p in ("t_block/1", "final_layer/linear", "y_embedder/y_proj/fc1"):
            assert table[p][seg] is None  # embedders / t_block / final layer stay float
    assert plan.step_segments() == tuple(s for s in range(4) for _ in range(5))
    assert MixedPrecisionPlan.from_json(plan.to_json()) == plan


def test_plan_validation_and_stretching():
    with pytest.raises(ValueError, match="boundaries"):
        MixedPrecisionPlan("x", 10, (1, 5), ())
    with pytest.raises(ValueError, match="segments"):
        MixedPrecisionPlan("x", 10, (0, 5), (BitsRule("mlp", 4, segments=(2,)),))
    with pytest.raises(ValueError, match="w_bits"):
        BitsRule("mlp", 3.5)
    plan = MixedPrecisionPlan("x", 20, (0, 5, 10, 15), ())
    assert plan.step_segments(8) == (0, 0, 1, 1, 2, 2, 3, 3)  # a shorter run maps proportionally
    with pytest.warns(UserWarning, match="blocks_99"):
        MixedPrecisionPlan("x", 4, (0,), (BitsRule("^blocks_99/", 8),)).check(["blocks_0/mlp/fc1"])


# ---------------------------------------------------------------------------------------------
# quantize_params(..., plan=...): the records of each segment are those of that segment's config
# ---------------------------------------------------------------------------------------------

BLOCKS = r"(^|/)(attn|cross_attn|attn_temp|mlp)/"
PLAN = MixedPrecisionPlan("mixed", 4, (0, 1, 3), (
    BitsRule(BLOCKS, 4, segments=(0,)),
    BitsRule(r"(^|/)mlp/", None, segments=(1,)),  # float in segment 1
    BitsRule(r"(^|/)attn/", 6, a_bits=6, segments=(2,)),
))


@pytest.fixture(scope="module")
def pixart(pixart_batch):
    return pixart_batch


@pytest.mark.parametrize("preset", ["viditq-w4a8", "naive-w8a8"])  # balanced / static activation scales
def test_plan_records_equal_per_segment_records(pixart, preset):
    model, params, batch = pixart
    base = QuantConfig.preset(preset, backend="xla")
    q, stats = quantize_params(params, [batch], model=model, config=base, plan=PLAN, return_stats=True)
    per_segment = [dense_kernels(quantize_params(params, [batch], model=model, config=PLAN.config_for_segment(base, s),
                                                 stats=stats)) for s in range(PLAN.num_segments)]
    kinds = set()
    for path, rec in dense_kernels(q).items():
        for s in range(PLAN.num_segments):
            want = per_segment[s][path]
            got = rec.variant_of(s) if isinstance(rec, SegmentedWeight) else rec
            kinds.add(type(got).__name__)
            if isinstance(want, jax.Array):  # float in this segment
                assert isinstance(got, (FloatKernel, jax.Array)), (path, s)
                np.testing.assert_array_equal(got.kernel if isinstance(got, FloatKernel) else got, want)
                continue
            assert got.layer == want.layer, (path, s)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
                np.testing.assert_array_equal(a, b)
    assert kinds == {"QuantizedWeight", "FloatKernel", "ArrayImpl"}
    # segments: step 0 | steps 1-2 | step 3; the mlp is W4 | float | the preset's bits (W4 or W8)
    mlp = q["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert isinstance(mlp, SegmentedWeight) and isinstance(mlp.variants[1], FloatKernel)
    np.testing.assert_array_equal(mlp.segment_variant, [0, 1, 0] if preset == "viditq-w4a8" else [0, 1, 2])
    # the restore target has the same structure, shapes and dtypes
    template = quantized_params_template(params, base, PLAN)
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    assert jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(q)
    assert shapes(template) == shapes(q)

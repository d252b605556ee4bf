"""The offline fold of the attention-output balancing into V and proj (vidq_jax/quant/fold.py, issue 12)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.fixtures import model_inputs
from models.families import family_of
from vidq_jax.errors import VidqError
from vidq_jax.quant import LayerQuant, LayerRule, QuantConfig, dense_paths, quantize_params
from vidq_jax.quant.api import quantization_summary, quantized_params_template, set_backend
from vidq_jax.quant.fold import fold_params, head_rotation, rotate_heads
from vidq_jax.quant.record import QuantizedWeight
from vidq_jax.quant.stats import LayerStats
from vidq_jax.quant.tree import get_kernel, get_node
from tests.fixture_models import fixture_case, random_pixart

# pixart_diffusers: q, k, v stored as separate to_q / to_k / to_v (converted into one fused qkv Dense)
FAMILY_CASES = ["pixart_diffusers", "opensora_v1_0_stdit", "opensora_v1_2_stdit3", "facebook_dit_xl_style"]
FOLD = LayerQuant(smooth_alpha=0.5, rotate=True, fold_heads=True)


def _inputs(case, model):
    batch = {k: jnp.asarray(v) for k, v in model_inputs(case).items()}
    if "y" in batch and batch["y"].ndim == 4:
        batch["y"] = batch["y"][:, 0]
    return batch


def _fake_stats(paths, params, seed=0):
    rng = np.random.default_rng(seed)
    return {p: LayerStats(absmax=rng.uniform(0.01, 50.0, get_kernel(params, p).shape[0]).astype(np.float32),
                          amax=50.0, min=-50.0, max=50.0, incoherence_mean=1.0, incoherence_max=1.0, rows=1, calls=1)
            for p in paths}


@pytest.mark.parametrize("name", FAMILY_CASES)
def test_fold_keeps_the_float_model(name):
    """Every family: folding strong smoothing + per-head rotation into V / proj leaves the output unchanged
    (fused qkv split 3 ways, cross-attention kv_linear halves, STDiT3's qk-norm on q/k only, DiT)."""
    case, model, params = fixture_case(name)
    fam = family_of(model)
    paths = dense_paths(params)
    targets = [p for p in paths if fam.attention_output_of(p)]
    assert targets and all(p.endswith("/proj") for p in targets)
    settings = {p: [FOLD if p in targets else None] for p in paths}
    folded, out_settings, _ = fold_params(params, settings, model=model, config=QuantConfig(), stats=_fake_stats(
        targets, params), batches=None)
    for p in targets:  # both sides moved, and the records run without any online transform
        assert not np.allclose(get_kernel(folded, p), get_kernel(params, p))
        assert out_settings[p][0].smooth_alpha is None and not out_settings[p][0].rotate
    batch = _inputs(case, model)
    apply = jax.jit(model.apply)
    y0 = np.asarray(apply({"params": params}, **batch))
    y1 = np.asarray(apply({"params": folded}, **batch))
    assert np.abs(y1 - y0).max() <= 1e-5 * max(np.abs(y0).max(), 1.0)


def test_head_rotation_orthogonal_hadamard_or_random():
    key = jax.random.key(3)
    for d in (12, 72, 10):  # 10: no Hadamard matrix -> seeded random orthogonal
        r = np.asarray(head_rotation(key, 3, d))
        np.testing.assert_allclose(np.einsum("hij,hkj->hik", r, r), np.broadcast_to(np.eye(d), (3, d, d)), atol=1e-5)
        assert r.shape == (3, d, d) and not np.allclose(r[0], r[1])  # independent per head
        assert (d == 10) != np.allclose(np.abs(r), 1 / np.sqrt(d), rtol=1e-6)
        np.testing.assert_array_equal(r, head_rotation(key, 3, d))  # seeded
    x = np.random.default_rng(0).standard_normal((5, 30)).astype(np.float32)
    r = np.asarray(head_rotation(key, 3, 10))
    blockdiag = np.zeros((30, 30), np.float32)
    for h in range(3):
        blockdiag[10 * h:10 * h + 10, 10 * h:10 * h + 10] = r[h]
    np.testing.assert_allclose(rotate_heads(x, r), x @ blockdiag, atol=1e-5)


@pytest.fixture(scope="module")
def folded_pixart():
    """One-block PixArt quantized with viditq-w8a8-fold, one proj with a static activation scale (whose
    statistics must come from the folded model)."""
    model, params, inputs = random_pixart(hidden_size=32, num_heads=2)
    cfg = QuantConfig.preset("viditq-w8a8-fold").with_rules(
        LayerRule("blocks_0/attn/proj", a_granularity="tensor", a_static=True))
    q, stats = quantize_params(params, [inputs], model=model, config=cfg, return_stats=True)
    return model, params, inputs, cfg, q, stats


def test_folded_model_is_close_to_float_and_records_are_plain(folded_pixart):
    model, params, inputs, cfg, q, stats = folded_pixart
    summary = quantization_summary(q)
    for p in ("blocks_0/attn/proj", "blocks_0/cross_attn/proj"):
        rec = get_kernel(q, p)
        assert isinstance(rec, QuantizedWeight) and rec.smooth is None and rec.hadamard_signs is None
        assert summary[p].endswith("+fold [auto]")
    assert "+smooth +rot" in summary["blocks_0/attn/qkv"]
    # the static scale is the folded input's: absmax collected on the folded float model
    rec = get_kernel(q, "blocks_0/attn/proj")
    np.testing.assert_allclose(float(rec.act_scale), stats["blocks_0/attn/proj"].amax / 127, rtol=1e-5)
    # V's columns of the float kv_linear (viditq keeps cross K/V float) are folded, K's are not
    kv, kv0 = get_node(q, "blocks_0/cross_attn/kv_linear"), get_node(params, "blocks_0/cross_attn/kv_linear")
    np.testing.assert_array_equal(kv["kernel"][:, :32], kv0["kernel"][:, :32])
    assert not np.allclose(kv["bias"][32:], kv0["bias"][32:])
    apply = jax.jit(model.apply)  # one compile per tree: op-by-op the quantized model compiles every op (~15 s)
    y_fp = np.asarray(apply({"params": params}, **inputs))
    y = np.asarray(apply({"params": q}, **inputs))
    assert np.linalg.norm(y - y_fp) / np.linalg.norm(y_fp) < 0.02


@pytest.mark.parametrize("backend", ["simulate", "xla", "pallas"])
def test_folded_record_runs_on_every_backend(folded_pixart, backend):
    """The folded proj is a plain record: every backend computes it (pallas: the kernel package's CPU path)."""
    model, params, inputs, cfg, q, stats = folded_pixart
    rec = get_kernel(q, "blocks_0/cross_attn/proj")
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 32)), jnp.float32)
    ref = x @ rec.effective_kernel()
    y = set_backend(rec, backend).quantized_dense(x, None, jnp.float32)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.02


def test_fold_round_trips_through_the_restore_target(folded_pixart):
    model, params, inputs, cfg, q, stats = folded_pixart
    restored = QuantConfig.from_dict(cfg.to_dict())
    assert restored.rules == cfg.rules
    target = quantized_params_template(params, restored, model=model)
    assert jax.tree_util.tree_structure(target) == jax.tree_util.tree_structure(q)
    shape = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, jnp.dtype(a.dtype)), t)  # noqa: E731
    assert shape(target) == shape(q)


def test_fold_on_a_layer_without_attention_output_is_one_line_error():
    model, params, inputs = random_pixart(hidden_size=32, num_heads=2)
    cfg = QuantConfig("bad", rules=(LayerRule(r"mlp/fc2$", fold_heads=True),))
    with pytest.raises(VidqError, match=r"^layer 'blocks_0/mlp/fc2' of PixArt \(pixart\): fold_heads=True.*attn_out$"):
        quantize_params(params, [inputs], model=model, config=cfg)

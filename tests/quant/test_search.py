"""Q-DiT's evolutionary group-size search (vidq_jax.quant.search) on the PixArt fixture model, with a cheap
fitness (output error of one denoiser call) standing in for the Fréchet distance of generated samples."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidq_jax.quant import LayerRule, QuantConfig, get_kernel, quantize_params
from vidq_jax.quant.plan import MixedPrecisionPlan
from vidq_jax.quant.search import (SearchSettings, candidate_params, genome_plan, mean_group, search_groups,
                                   search_space, update_top_k, with_genome)

# the MLPs of the two blocks: fc1 (C_in 96) and fc2 (C_in 384); group sizes 32 or 64 (64 does not divide 96)
CONFIG = QuantConfig("qdit-mlp", default=None, rules=(LayerRule(r"(^|/)mlp/fc", w_bits=4, w_granularity="group",
                     w_group_size=32, a_granularity="group", a_group_size=32, a_symmetric=False),))
SETTINGS = SearchSettings(population=2, generations=2, top_k=2, min_mean_group=40, seed=3)
CHOICES = (32, 64)


@pytest.fixture(scope="module")
def setup(pixart_batch):
    model, params, batch = pixart_batch
    traces = []

    @jax.jit
    def err(p):
        traces.append(1)
        return jnp.mean(jnp.square(model.apply({"params": p}, **batch) - model.apply({"params": params}, **batch)))

    return model, params, lambda p: float(err(p)), traces


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    model, params, fitness, traces = setup
    folder = tmp_path_factory.mktemp("search")
    res = search_groups(params, fitness, model=model, config=CONFIG, settings=SETTINGS, choices=CHOICES,
                        state_path=folder / "state.json", log_path=folder / "log.json", progress=False)
    return res, folder, len(traces)


def test_space_and_top_k():
    genes = search_space(_params_shapes(), CONFIG)
    assert [(g.path, g.choices, g.seed) for g in genes[:2]] == [("blocks_0/mlp/fc1", (32,), 32),
                                                               ("blocks_0/mlp/fc2", (32, 64, 128, 192), 128)]
    assert [g.path for g in search_space(_params_shapes(), CONFIG, choices=(192,))] == [
        "blocks_0/mlp/fc2", "blocks_1/mlp/fc2"]  # 192 does not divide 96: fc1 keeps the config's setting
    with pytest.raises(ValueError, match="nothing to search"):
        search_space(_params_shapes(), CONFIG, choices=(288,))
    fit = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 0.5}
    assert update_top_k(["b", "c"], ["a", "d", "b"], fit, 2) == ["d", "b"]  # elites survive, no duplicates
    with pytest.raises(ValueError, match="group size 64 not among its choices"):
        genome_plan(genes, [64, 64, 32, 32])


def _params_shapes():
    k = lambda a, b: {"kernel": jax.ShapeDtypeStruct((a, b), jnp.float32)}  # noqa: E731
    return {f"blocks_{i}": {"mlp": {"fc1": k(96, 384), "fc2": k(384, 96)}} for i in range(2)}


def test_search_compiles_once_and_its_plan_is_what_quantize_params_reads(setup, full_run):
    model, params, fitness, _ = setup
    res, folder, traces = full_run
    assert traces == 1  # every candidate ran the one compiled forward (variant tables only)
    assert len(res.history) == 2 and len(res.evaluated) == 3  # [32, 64, 32, 64] (seed) and 2 more feasible
    assert all(mean_group(g["genome"]) >= 40 for h in res.history for g in h["population"])
    assert res.best_fitness == min(res.evaluated.values())
    plan = MixedPrecisionPlan.from_json(res.plan().to_json())
    q = quantize_params(params, None, model=model, config=CONFIG, plan=plan)
    tree = with_genome(candidate_params(params, res.genes, model=model, config=CONFIG), res.genes, res.best)
    for gene, g in zip(res.genes, res.best):  # the searched records are the ones quantize_params makes
        rec, cand = get_kernel(q, gene.path), get_kernel(tree, gene.path).variant_of(0)
        assert rec.layer.w_group_size == rec.layer.a_group_size == g == cand.layer.w_group_size
        np.testing.assert_array_equal(rec.qvalue, cand.qvalue)
    assert fitness(tree) == res.best_fitness
    log = json.loads((folder / "log.json").read_text())
    assert [h["generation"] for h in log] == [0, 1] and log[1]["best"]["fitness"] == res.best_fitness


def test_resume_continues_exactly(setup, full_run, tmp_path):
    model, params, fitness, _ = setup
    res, _, _ = full_run
    calls = []

    def interrupted(p):  # the search is killed during its second evaluation
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fitness(p)

    with pytest.raises(KeyboardInterrupt):
        search_groups(params, interrupted, model=model, config=CONFIG, settings=SETTINGS, choices=CHOICES,
                      state_path=tmp_path / "s.json", progress=False)
    assert json.loads((tmp_path / "s.json").read_text())["pending"]
    resumed = search_groups(params, fitness, model=model, config=CONFIG, settings=SETTINGS, choices=CHOICES,
                            state_path=tmp_path / "s.json", resume=True, progress=False)
    assert resumed.history == res.history and resumed.best == res.best
    with pytest.raises(ValueError, match=r"other settings \(top_k=2\)"):
        search_groups(params, fitness, model=model, config=CONFIG, choices=CHOICES, state_path=tmp_path / "s.json",
                      resume=True,
                      settings=SearchSettings(**{**SETTINGS.__dict__, "top_k": 3}), progress=False)
    # a time budget stops breeding after the first generation; the state resumes the rest exactly
    cut = search_groups(params, fitness, model=model, config=CONFIG, settings=SETTINGS, choices=CHOICES,
                        state_path=tmp_path / "b.json", progress=False, time_budget_s=0.0)
    assert cut.history == res.history[:1]
    rest = search_groups(params, fitness, model=model, config=CONFIG, settings=SETTINGS, choices=CHOICES,
                         state_path=tmp_path / "b.json", resume=True, progress=False)
    assert rest.history == res.history


def test_bitops_constraint():
    """BitOps per token: N·K·b_w·b_a for the MACs + N·(K/g)·32·32 for the group scales; under
    ``constraint="bitops"`` every candidate costs at most ``max_bitops`` x the all-128 seed."""
    from vidq_jax.quant.search import Gene, _Evolution, bitops

    genes = [Gene("a", 256, (32, 64, 128), 4, 8, 768), Gene("b", 1024, (32, 64, 128), 4, 8, 256)]
    assert bitops(genes, (128, 64)) == 768 * 256 * 32 + 768 * 2 * 1024 + 256 * 1024 * 32 + 256 * 16 * 1024
    assert bitops(genes, (32, 128)) > bitops(genes, (128, 128)) > bitops([genes[0]], (128,))
    settings = SearchSettings(population=4, generations=1, top_k=2, constraint="bitops", max_bitops=1.05, seed=0)
    ev = _Evolution(genes, settings)
    pop = ev.first_population()
    assert pop[0] == "128,128" and all(ev.relative_bitops(c) <= 1.05 for c in pop)
    assert not ev.feasible((32, 32)) and ev.feasible((128, 128))
    with pytest.raises(ValueError, match="constraint='flops' unknown"):
        SearchSettings(constraint="flops")

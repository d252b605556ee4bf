"""Q-DiT's evolutionary search of one group size per quantized linear layer (viditq_method.md §9).

* **Genome**: one gene per layer the config quantizes (:func:`search_space`), each a group size from
  :data:`CHOICES` ``= {32, 64, 128, 192, 288}`` that divides the layer's ``C_in`` (layers with no such
  divisor keep the config's setting and are not searched). The group size applies to the weight and to
  its input activation alike (:class:`~vidq_jax.quant.plan.BitsRule` ``group_size``).
* **Constraint** (``SearchSettings.constraint``): ``"mean_group"`` — mean group size over the genes
  ``>= min_mean_group`` (128; Q-DiT's code uses this mean as its proxy for the paper's BitOps budget), or
  ``"bitops"`` — the paper's form, :func:`bitops` of the genome ``<= max_bitops`` x that of the all-128 seed:
  per token, every searched layer costs ``N·K·b_w·b_a`` integer bit-operations for its MACs plus one float32
  multiply-add per output and group for the group scales (``N·(K/g)·32·32``), so small groups pay for their
  scales in the same currency as bits.
* **Fitness** (lower is better): a caller-supplied ``fitness(params) -> float`` — the Fréchet distance of
  generated samples to the real data's features (the project's feature networks); :mod:`vidq_jax.search_groups`
  builds it from the bundled sampling and feature machinery (this module imports neither pipeline nor sampling).
* **Evolution** (Q-DiT's ``evolution.py``, after Once-for-All): generation 0 = the all-128 seed candidate
  (each gene's choice nearest to 128 where 128 does not divide) plus random feasible candidates up to
  ``population`` (50); after each generation the ``top_k`` (10) best candidates SEEN SO FAR are kept; the
  next generation = ``mutations`` (25) children of random top-k parents with every gene resampled with
  probability ``mutation_prob`` (0.1), ``crossovers`` (25) uniform crossovers of two random top-k parents,
  refilled with random candidates; children must satisfy the constraint and be new (at most 10 tries per
  wanted child, as the reference). ``generations`` evaluated populations (the script runs 10 epochs).

  Not copied from the published script: it calls an undefined ``update_top_k`` (here
  :func:`update_top_k` merges the previous top-k with the new generation, so elites survive), and its
  last epoch breeds and evaluates children that never enter the top-k (here each generation is evaluated
  and then ranked; nothing evaluated is discarded).

* **One compile for the whole search**: every searched layer holds ALL its candidate records, one per
  allowed group size, as variants of a :class:`~vidq_jax.quant.segmented.SegmentedWeight` (quantized once,
  by the config's own weight method, before the search); a genome only writes the variant index of each
  layer (a traced leaf), so the sampler traced for the first candidate serves them all and every candidate
  runs the real quantized records (same backend as deployment).
* **Resumable**: the state (space, settings, every evaluated genome and its fitness, the top-k, the
  population, the random generator) is written as JSON when a generation is bred, after every evaluation
  and when it is ranked; ``resume=True`` continues from it, mid-generation too (refusing a state of
  another space or other settings); a resumed search ends exactly as an uninterrupted one. A log of every generation (population
  fitness, best, top-k) lands in the state's ``history`` and in ``log_path``.
* **Output**: :class:`SearchResult` whose :meth:`~SearchResult.plan` is a one-segment
  :class:`~vidq_jax.quant.plan.MixedPrecisionPlan` that ``quantize_params(..., config=config, plan=plan)``
  (and ``vidq quantize --plan``) reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from models.families import find_family
from vidq_jax.quant.api import quantize_params
from vidq_jax.quant.config import QuantConfig
from vidq_jax.quant.plan import BitsRule, MixedPrecisionPlan
from vidq_jax.quant.segmented import SegmentedWeight
from vidq_jax.quant.tree import dense_kernels, get_kernel, rewrap_params, set_kernel, unwrap_params

CHOICES: tuple[int, ...] = (32, 64, 128, 192, 288)
"""Q-DiT's group-size search space."""
SEED_GROUP = 128
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Gene:
    """One searched layer: its Dense ``path``, ``C_in``, the allowed group sizes, its quantization bits and
    ``C_out`` (for :func:`bitops`)."""

    path: str
    in_features: int
    choices: tuple[int, ...]
    w_bits: int
    a_bits: int | None
    out_features: int = 0

    @property
    def seed(self) -> int:
        """The seed candidate's value: 128, else the allowed size nearest to it (the larger on a tie)."""
        return min(self.choices, key=lambda g: (abs(g - SEED_GROUP), -g))

    def rule(self, group: int) -> BitsRule:
        return BitsRule(f"^{re.escape(self.path)}$", self.w_bits, a_bits=self.a_bits, group_size=group)


def _bound(config: QuantConfig, model: Any, paths: Sequence[str]) -> QuantConfig:
    return config.for_model(model, paths) if find_family(model) is not None else config


def search_space(params: Mapping[str, Any], config: QuantConfig, *, model: Any = None,
                 choices: Iterable[int] = CHOICES) -> list[Gene]:
    """The genes: every Dense ``config`` quantizes with at least one group size of ``choices`` dividing
    its ``C_in``, in path order."""
    kernels = dense_kernels(params)
    cfg = _bound(config, model, list(kernels))
    choices = tuple(sorted({int(c) for c in choices}))
    genes = []
    for p, k in kernels.items():
        lq = cfg.resolve(p)
        if lq is None:
            continue
        allowed = tuple(c for c in choices if k.shape[0] % c == 0)
        if allowed:
            genes.append(Gene(p, int(k.shape[0]), allowed, lq.w_bits, lq.a_bits, int(k.shape[-1])))
    if not genes:
        raise ValueError(f"config {config.name!r}: no quantized layer has a C_in divisible by a group size of "
                         f"{choices}: nothing to search")
    return genes


def genome_plan(genes: Sequence[Gene], genome: Sequence[int], name: str = "qdit-search",
                description: str = "") -> MixedPrecisionPlan:
    """The one-segment plan giving every gene its group size (what ``quantize_params(plan=)`` reads)."""
    for gene, g in zip(genes, genome, strict=True):
        if g not in gene.choices:
            raise ValueError(f"layer {gene.path!r}: group size {g} not among its choices {gene.choices}")
    return MixedPrecisionPlan(name, 1, (0,), tuple(gene.rule(int(g)) for gene, g in zip(genes, genome)),
                              description=description)


def mean_group(genome: Sequence[int]) -> float:
    """The constraint's measure: the mean group size over the genes (Q-DiT's ``efficiency_predictor``)."""
    return float(np.mean(genome))


SCALE_BITOPS = 32 * 32  # one float32 multiply-add of the group scales, in integer bit-operations


def bitops(genes: Sequence[Gene], genome: Sequence[int]) -> float:
    """BitOps per token of the searched layers (module docstring): ``Σ N·K·b_w·b_a + N·(K/g)·32·32``
    (weight-only layers: ``b_a = 16``)."""
    return float(sum(g.out_features * g.in_features * g.w_bits * (g.a_bits or 16)
                     + g.out_features * (g.in_features // int(size)) * SCALE_BITOPS
                     for g, size in zip(genes, genome, strict=True)))


# ------------------------------------------------------------------------------------------------
# the evaluation tree: every candidate record of every gene, the genome picks the variants
# ------------------------------------------------------------------------------------------------


def candidate_params(params: Mapping[str, Any], genes: Sequence[Gene], calib: Any = None, *, model: Any = None,
                     config: QuantConfig, stats: Any = None) -> Any:
    """``params`` quantized by ``config`` where every gene's kernel is a :class:`SegmentedWeight` holding
    one record per allowed group size (quantized with the config's weight method; one
    ``quantize_params`` run per group size). Select a genome with :func:`with_genome`."""
    inner, wrapped = unwrap_params(params)
    calib = None if calib is None else list(calib)
    sizes = sorted({g for gene in genes for g in gene.choices})
    runs = {}
    for g in sizes:
        rules = tuple(gene.rule(g) for gene in genes if g in gene.choices)
        plan = MixedPrecisionPlan(f"all-{g}", 1, (0,), rules)
        runs[g] = quantize_params(inner, calib, model=model, config=config, plan=plan, stats=stats)
    tree = runs[sizes[0]]  # layers outside the genome: the config's own records (the same in every run)
    for gene in genes:
        variants = tuple(get_kernel(runs[g], gene.path) for g in gene.choices)
        tree = set_kernel(tree, gene.path, SegmentedWeight(
            variants, jnp.asarray([gene.choices.index(gene.seed)], jnp.int32), jnp.zeros((), jnp.int32)))
    return rewrap_params(tree, wrapped)


def with_genome(tree: Any, genes: Sequence[Gene], genome: Sequence[int]) -> Any:
    """The candidate tree (:func:`candidate_params`) running ``genome`` (same structure: no retrace)."""
    inner, wrapped = unwrap_params(tree)
    for gene, g in zip(genes, genome, strict=True):
        rec = get_kernel(inner, gene.path)
        inner = set_kernel(inner, gene.path, rec.replace(
            segment_variant=jnp.asarray([gene.choices.index(int(g))], jnp.int32)))
    return rewrap_params(inner, wrapped)


# ------------------------------------------------------------------------------------------------
# evolution
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Hyper-parameters of the evolution (Q-DiT defaults); part of the resumable state."""

    population: int = 50
    generations: int = 10
    top_k: int = 10
    mutations: int | None = None  # default population // 2
    crossovers: int | None = None  # default population // 2
    mutation_prob: float = 0.1
    min_mean_group: float = 128.0
    seed: int = 0
    constraint: str = "mean_group"  # or "bitops" (CONSTRAINTS)
    max_bitops: float = 1.0  # "bitops": at most this multiple of the all-128 seed genome's BitOps

    def __post_init__(self) -> None:
        for name in ("population", "generations", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        for name in ("mutations", "crossovers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name}={v!r} must be a non-negative integer")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob={self.mutation_prob!r} must lie in [0, 1]")
        if not np.isfinite(self.min_mean_group):
            raise ValueError(f"min_mean_group={self.min_mean_group!r} must be finite")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint={self.constraint!r} unknown; choose one of {CONSTRAINTS}")
        if not (np.isfinite(self.max_bitops) and self.max_bitops > 0):
            raise ValueError(f"max_bitops={self.max_bitops!r} must be a positive finite multiple of the seed's BitOps")

    def describe(self) -> str:
        """The constraint in words (logs, reports)."""
        if self.constraint == "bitops":
            return f"BitOps <= {self.max_bitops:g} x all-128"
        return f"mean group >= {self.min_mean_group:g}"

    @property
    def n_mutations(self) -> int:
        return self.population // 2 if self.mutations is None else self.mutations

    @property
    def n_crossovers(self) -> int:
        return self.population // 2 if self.crossovers is None else self.crossovers


CONSTRAINTS: tuple[str, ...] = ("mean_group", "bitops")


def _key(genome: Sequence[int]) -> str:
    return ",".join(str(int(g)) for g in genome)


def _genome(key: str) -> tuple[int, ...]:
    return tuple(int(g) for g in key.split(","))


def update_top_k(top_k: Sequence[str], candidates: Iterable[str], fitness: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` best distinct genomes among the previous ``top_k`` and the new ``candidates`` (by
    ``fitness``, lower first; ties keep the earlier one) — the function Q-DiT's script calls but never defines."""
    merged = list(dict.fromkeys([*top_k, *candidates]))
    return sorted(merged, key=lambda c: fitness[c])[:k]


@dataclasses.dataclass
class SearchResult:
    """Outcome of :func:`search_groups`: the genes, the best genome and its fitness, the per-generation
    history and every evaluated genome."""

    genes: list[Gene]
    best: tuple[int, ...]
    best_fitness: float
    history: list[dict]
    evaluated: dict[str, float]

    def plan(self, name: str = "qdit-search") -> MixedPrecisionPlan:
        return genome_plan(self.genes, self.best, name,
                           description=f"Q-DiT evolutionary group-size search: fitness {self.best_fitness:.6g}, mean "
                                       f"group {mean_group(self.best):.1f}")


def _space_json(genes: Sequence[Gene]) -> list:
    return [[g.path, g.in_features, list(g.choices), g.w_bits, g.a_bits] for g in genes]


def _write_json(path: Path, data: Any) -> None:
    """Atomic write (temporary file + rename): an interrupted search never leaves a torn state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class _Evolution:
    """The mutable search state (module docstring); :meth:`to_json` / :meth:`from_json` round-trip it."""

    def __init__(self, genes: Sequence[Gene], settings: SearchSettings):
        self.genes = list(genes)
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)
        self.fitness: dict[str, float] = {}
        self.top: list[str] = []
        self.population: list[str] = []
        self.generation = 0  # populations evaluated and ranked so far
        self.pending = False  # the population is bred but not yet ranked
        self.history: list[dict] = []
        seed = tuple(g.seed for g in self.genes)
        self.bitops_budget = settings.max_bitops * bitops(self.genes, seed) * (1 + 1e-12)

    # -- candidates ---------------------------------------------------------------------------
    def feasible(self, genome: Sequence[int]) -> bool:
        if self.s.constraint == "bitops":
            return bitops(self.genes, genome) <= self.bitops_budget
        return mean_group(genome) >= self.s.min_mean_group

    def relative_bitops(self, key: str) -> float:
        """A genome's :func:`bitops` over the all-128 seed's."""
        return bitops(self.genes, _genome(key)) / bitops(self.genes, tuple(g.seed for g in self.genes))

    def random_genome(self) -> tuple[int, ...]:
        return tuple(int(g.choices[self.rng.integers(len(g.choices))]) for g in self.genes)

    def mutate(self, parent: Sequence[int]) -> tuple[int, ...]:
        out = list(parent)
        for i, g in enumerate(self.genes):
            if self.rng.random() < self.s.mutation_prob:
                out[i] = int(g.choices[self.rng.integers(len(g.choices))])
        return tuple(out)

    def cross(self, a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(x if self.rng.random() < 0.5 else y) for x, y in zip(a, b))

    def _fill(self, out: list[str], want: int, make: Callable[[], tuple[int, ...]], tries: int) -> None:
        """Append up to ``want`` new feasible, unseen genomes made by ``make`` (at most ``tries`` attempts)."""
        goal = len(out) + want
        for _ in range(tries):
            if len(out) >= goal:
                return
            c = make()
            key = _key(c)
            if self.feasible(c) and key not in self.fitness and key not in out:
                out.append(key)

    def first_population(self) -> list[str]:
        out: list[str] = []
        seed = tuple(g.seed for g in self.genes)
        if self.feasible(seed):
            out.append(_key(seed))
        self._fill(out, self.s.population - len(out), self.random_genome, 1000 * self.s.population)
        if not out:
            raise ValueError(f"no genome satisfies {self.s.describe()} (largest possible mean group "
                             f"{mean_group([max(g.choices) for g in self.genes]):.1f}); relax the constraint")
        return out

    def next_population(self) -> list[str]:
        parents = [_genome(k) for k in self.top]
        pick = lambda: parents[self.rng.integers(len(parents))]  # noqa: E731
        out: list[str] = []
        self._fill(out, self.s.n_mutations, lambda: self.mutate(pick()), 10 * self.s.n_mutations)
        self._fill(out, self.s.n_crossovers, lambda: self.cross(pick(), pick()), 10 * self.s.n_crossovers)
        self._fill(out, max(self.s.population - len(out), 0), self.random_genome, 1000 * self.s.population)
        return out

    def rank(self) -> dict:
        """Rank the evaluated population into the top-k and log the generation."""
        self.top = update_top_k(self.top, self.population, self.fitness, self.s.top_k)
        vals = [self.fitness[c] for c in self.population]
        rec = {
            "generation": self.generation,
            "evaluated": len(self.population),
            "population": [{"genome": list(_genome(c)), "fitness": self.fitness[c],
                            "mean_group": mean_group(_genome(c))} for c in self.population],
            "population_best": float(np.min(vals)),
            "population_mean": float(np.mean(vals)),
            "best": {"genome": list(_genome(self.top[0])), "fitness": self.fitness[self.top[0]],
                     "mean_group": mean_group(_genome(self.top[0])), "bitops_vs_seed": self.relative_bitops(self.top[0])},
            "top_k": [{"genome": list(_genome(c)), "fitness": self.fitness[c]} for c in self.top],
        }
        self.history.append(rec)
        self.generation += 1
        return rec

    # -- state ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "space": _space_json(self.genes),
            "settings": dataclasses.asdict(self.s),
            "generation": self.generation,
            "pending": self.pending,
            "population": self.population,
            "top_k": self.top,
            "fitness": self.fitness,
            "rng": self.rng.bit_generator.state,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any], genes: Sequence[Gene], settings: SearchSettings,
                  where: str) -> "_Evolution":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{where}: search state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state.get("space") != _space_json(genes):
            raise ValueError(f"{where}: the state was searched over other layers / group sizes than this model and "
                             "config; start a new search (another --out) or drop --resume")
        saved = {**dataclasses.asdict(SearchSettings()), **dict(state.get("settings") or {})}  # older states: defaults
        now = dataclasses.asdict(settings)
        diff = sorted(k for k in now if k != "generations" and saved.get(k) != now[k])
        if diff:
            raise ValueError(f"{where}: the state used other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}"
                             f"); resume with the same ones (only the number of generations may grow)")
        ev = cls(genes, settings)
        ev.generation = int(state["generation"])
        ev.pending = bool(state.get("pending", False))
        ev.population = list(state["population"])
        ev.top = list(state["top_k"])
        ev.fitness = {k: float(v) for k, v in state["fitness"].items()}
        ev.rng.bit_generator.state = state["rng"]
        ev.history = list(state["history"])
        return ev


def search_groups(
    params: Mapping[str, Any],
    fitness: Callable[[Any], float],
    *,
    model: Any = None,
    config: QuantConfig,
    calib: Any = None,
    stats: Any = None,
    settings: SearchSettings | None = None,
    choices: Iterable[int] = CHOICES,
    state_path: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    time_budget_s: float | None = None,
) -> SearchResult:
    """Run the evolutionary group-size search (module docstring).

    ``fitness(params) -> float`` (lower is better) gets the candidate tree of :func:`candidate_params`
    with the genome selected (sample from it like from any quantized params). ``calib`` / ``stats``: the
    calibration the config needs (as for :func:`~vidq_jax.quant.quantize_params`). ``state_path``: the
    JSON state written after every generation (``resume=True`` continues from it); ``log_path``: the JSON
    list of every generation. ``progress``: a tqdm bar over the evaluations (``None``: only on a terminal).
    ``time_budget_s``: after the first generation, breed no new one once this many seconds have passed (the
    result is the best so far; the state stays resumable for the remaining generations).
    """
    import time

    start = time.perf_counter()
    from tqdm.auto import tqdm

    settings = settings or SearchSettings()
    inner, _ = unwrap_params(params)
    genes = search_space(inner, config, model=model, choices=choices)
    state_path = None if state_path is None else Path(state_path)
    if resume:
        if state_path is None or not state_path.is_file():
            raise ValueError(f"resume: no search state at {state_path} (run without resume first)")
        ev = _Evolution.from_json(json.loads(state_path.read_text()), genes, settings, str(state_path))
    else:
        ev = _Evolution(genes, settings)
    tree = candidate_params(inner, genes, calib, model=model, config=config, stats=stats)
    remaining = settings.generations - ev.generation

    def save() -> None:
        if state_path is not None:
            _write_json(state_path, ev.to_json())

    bar = tqdm(total=max(remaining, 0) * settings.population, desc="group-size search", unit="candidate",
               disable=None if progress is None else not progress)
    try:
        while ev.generation < settings.generations:
            if (time_budget_s is not None and ev.generation and not ev.pending
                    and time.perf_counter() - start > time_budget_s):
                if log is not None:
                    log(f"time budget of {time_budget_s:g} s spent after {ev.generation} generation(s); stopping")
                break
            # the state is saved once a generation is bred, after every evaluation and once it is ranked: a
            # resumed search continues the interrupted generation and breeds exactly as an uninterrupted one
            if not ev.pending:
                ev.population = ev.first_population() if ev.generation == 0 else ev.next_population()
                if not ev.population:  # every feasible genome the operators reach was evaluated already
                    if log is not None:
                        log(f"generation {ev.generation}: no new feasible candidate (search space exhausted); "
                            "stopping")
                    break
                if ev.generation == 0 and len(ev.population) < settings.population and log is not None:
                    log(f"generation 0: only {len(ev.population)} feasible candidate(s) found for a population of "
                        f"{settings.population} ({settings.describe()} leaves little room)")
                ev.pending = True
                save()
            for c in ev.population:
                if c not in ev.fitness:
                    value = float(fitness(with_genome(tree, genes, _genome(c))))
                    ev.fitness[c] = value if np.isfinite(value) else float("inf")
                    save()
                bar.update(1)
                bar.set_postfix(best=min((ev.fitness[t] for t in ev.top), default=min(ev.fitness.values())))
            rec = ev.rank()
            ev.pending = False
            if log is not None:
                log(f"generation {rec['generation']}: best {rec['best']['fitness']:.6g} (mean group "
                    f"{rec['best']['mean_group']:.1f}), population best {rec['population_best']:.6g} mean "
                    f"{rec['population_mean']:.6g}")
            save()
            if log_path is not None:
                _write_json(Path(log_path), ev.history)
    finally:
        bar.close()
    if not ev.top:
        raise ValueError("the search evaluated no candidate (generations=0?)")
    best = _genome(ev.top[0])
    return SearchResult(genes, best, ev.fitness[ev.top[0]], ev.history, dict(ev.fitness))


__all__ = [
    "CHOICES",
    "CONSTRAINTS",
    "Gene",
    "SearchResult",
    "SearchSettings",
    "bitops",
    "candidate_params",
    "genome_plan",
    "mean_group",
    "search_groups",
    "search_space",
    "update_top_k",
    "with_genome",
]

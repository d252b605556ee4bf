"""Sequential quantization: layers whose weight method is ``sequential`` (GPTQ) get calibration statistics
taken with the layers executed before them already quantized.

How (the cheapest correct way with the one-pass statistics collector of :mod:`vidq_jax.quant.stats`):

1. the Dense layers are put in execution order — one abstract trace of the model on the first
   calibration batch (``jax.eval_shape``: no compute) records the order in which the intercepted layers run;
2. consecutive layers of one transformer block (the family's block patterns, :func:`~vidq_jax.quant.groups.block_of`;
   outside the blocks: of one top-level module) form a STAGE — Q-DiT's granularity: inside a block every
   layer sees the block's input computed by the quantized earlier blocks, its own block still float;
3. stage by stage: if the stage holds a sequential layer and some earlier layer is already quantized, ONE
   jitted forward pass per calibration batch collects the statistics of the stage's layers on the
   current params (earlier stages' records in place, with their activation quantizers active — the records
   quantize their inputs as at inference); the stage's layers are then quantized and written into the params.

Cost: one forward pass per batch per stage with a sequential layer (about the number of blocks), each a new
trace/compile (the params structure changes as records replace kernels), instead of one pass per layer.
Layers of a timestep-segment plan with several settings continue the later stages with their first setting.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from vidq_jax.quant.groups import block_of
from vidq_jax.quant.methods import layer_statistics, weight_method
from vidq_jax.quant.stats import LayerStats, collect_stats, make_stats_fn
from vidq_jax.quant.tree import set_kernel


def _batch_dict(item: Any) -> Mapping[str, Any]:
    """The model inputs of one calibration item (``CalibBatch``, ``(name, batch)`` pair or dict)."""
    if hasattr(item, "as_pair"):
        item = item.as_pair()
    return item[1] if isinstance(item, tuple) else item


def execution_order(model: Any, params: Mapping[str, Any], batch: Mapping[str, Any], paths: Sequence[str]) -> list[str]:
    """``paths`` in the order the model calls them on ``batch`` (one abstract trace); layers never
    called come last, in the given order."""
    fn, order = make_stats_fn(model, paths)
    jax.eval_shape(fn, params, dict(batch))
    seen = list(dict.fromkeys(order))
    return seen + [p for p in paths if p not in set(seen)]


def stages(order: Sequence[str], model: Any = None) -> list[list[str]]:
    """Consecutive layers of one transformer block (or one top-level module outside the blocks) in
    ``order``, as a list of stages."""
    out: list[list[str]] = []
    last = None
    for p in order:
        key = block_of(p, model) or p.split("/")[0]
        if out and key == last:
            out[-1].append(p)
        else:
            out.append([p])
        last = key
    return out


def sequential_records(
    inner: Mapping[str, Any],
    items: Sequence[tuple[str, Any]],
    quantize_item: Callable[[str, Any, LayerStats | None], Any],
    *,
    model: Any,
    stats: Mapping[str, LayerStats],
    batches: Sequence[Any],
    progress: bool | None = None,
) -> dict[tuple[str, Any], Any]:
    """Records of ``(path, LayerQuant)`` items quantized stage by stage (module docstring);
    ``quantize_item(path, layer, layer_stats)`` quantizes one item, ``stats`` are the float model's
    statistics (used where no re-collection is needed). ``progress``: a tqdm bar over the stages
    (``None``: only on a terminal)."""
    from tqdm.auto import tqdm

    settings: dict[str, list[Any]] = {}
    for p, lq in items:
        settings.setdefault(p, []).append(lq)
    seq = {p for p, lqs in settings.items() if any(weight_method(lq.w_method, p).sequential for lq in lqs)}
    out: dict[tuple[str, Any], Any] = {}
    if not batches or model is None:
        warnings.warn("sequential quantization (GPTQ) without calibration batches and model: every layer uses the "
                      "float model's statistics", stacklevel=3)
        return {(p, lq): quantize_item(p, lq, stats.get(p)) for p, lq in items}
    batches = list(batches)
    plan = stages(execution_order(model, inner, _batch_dict(batches[0]), list(settings)), model)
    current = inner
    quantized = False
    for stage in tqdm(plan, desc="sequential quantization", unit="stage", disable=None if progress is None else not progress):
        need = [p for p in stage if p in seq]
        st: Mapping[str, LayerStats] = stats
        if need and quantized:
            names = sorted({n for p in need for lq in settings[p] for n in layer_statistics(lq, p)})
            st = {**stats, **collect_stats(model, current, batches, paths=need, statistics=names)}
        for p in stage:
            for lq in settings[p]:
                out[(p, lq)] = quantize_item(p, lq, st.get(p))
            current = set_kernel(current, p, out[(p, settings[p][0])])
            quantized = True
    return out


__all__ = ["execution_order", "sequential_records", "stages"]

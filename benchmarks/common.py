"""Shared benchmark helpers: timing (median of repetitions, rotating input sets), environment record."""

from __future__ import annotations

import datetime
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax

REPO = Path(__file__).resolve().parent.parent  # default location of benchmarks/results


def device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", str(d))


def environment() -> dict[str, Any]:
    """What every committed result row carries: GPU, JAX version, date, and the ``XLA_FLAGS`` in effect
    (``--xla_gpu_enable_cublaslt=true`` fuses the bf16 GEMMs' bias into a cuBLASLt epilogue, which XLA's
    default cuBLAS path adds as a matrix ``C`` operand; see ``pallas_kernels/NOTES.md``)."""
    return {
        "gpu": device_name(),
        "platform": jax.devices()[0].platform,
        "jax_version": jax.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def median_time(fn: Callable, arg_sets: list[tuple], iters: int = 20, reps: int = 5, warmup: int = 2) -> dict[str, float]:
    """Time an already-jitted ``fn`` over rotating argument sets.

    Warm-up calls first (compilation stays out), then ``reps`` repetitions of ``iters`` back-to-back
    calls ended by ``block_until_ready``; returns the median, min and max per-call time in ms.
    """
    for _ in range(warmup):
        for a in arg_sets:
            jax.block_until_ready(fn(*a))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = None
        for i in range(iters):
            out = fn(*arg_sets[i % len(arg_sets)])
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / iters * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def peak_memory_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU backends have no memory stats
        return None
    return stats.get("peak_bytes_in_use")


TOY = "TOY SIZES ({why}): a smoke run of the code path, not a measurement"


def mark_toy(rows: list[dict], tiny: bool) -> list[dict]:
    """Every result row says whether it comes from a toy-size (``--tiny``) run: ``"tiny": true/false``."""
    for r in rows:
        r["tiny"] = bool(tiny)
    return rows


def title(text: str, tiny: bool, why: str = "--tiny") -> str:
    """A results title (markdown heading or printed table); a toy-size run (``--tiny``, fixture
    models) says so in it."""
    return f"{text} — {TOY.format(why=why)}" if tiny else text


def results_path(default: str | Path, given: str | Path | None, tiny: bool) -> Path:
    """``--out`` when given, else ``default`` — as ``<stem>_tiny<suffix>`` for a ``--tiny`` run, so toy
    numbers never overwrite measured results."""
    if given is not None:
        return Path(given)
    default = Path(default)
    return default.with_name(f"{default.stem}_tiny{default.suffix}") if tiny else default

"""Shape-keyed kernel configurations stored in the repository.

Each op folder holds a ``configs.json``::

    {"<gpu name>": {"<kernel>": {"<M-bucket>,<K>,<N>": {"tm": 128, ...}, "default": {...}}}}

``<gpu name>`` is ``jax.devices()[0].device_kind`` (e.g. ``"NVIDIA H200"``) or ``"default"``.
Lookup order: exact (gpu, kernel, bucket, K, N) -> (gpu, kernel, "default") ->
("default", kernel, bucket/K/N) -> ("default", kernel, "default") -> the caller's fallback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pallas_kernels._compat import gpu_name

M_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def m_bucket(m: int) -> int:
    """Smallest bucket >= m (the largest bucket for bigger M)."""
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1]


def shape_key(m: int, k: int, n: int) -> str:
    return f"{m_bucket(m)},{k},{n}"


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    return json.loads(p.read_text())


def _gpus(gpu_rows: bool) -> tuple[str, ...]:
    return (gpu_name(), "default") if gpu_rows else ("default",)


def lookup_row(
    config_file: Path, kernel: str, m: int, k: int, n: int, gpu_rows: bool = True
) -> dict[str, Any] | None:
    """The row stored for exactly this shape's key (this GPU's, else the ``"default"`` table's); ``None`` if
    neither has one (no ``"default"`` row: for tables keyed by K whose M-bucket rows are exceptions)."""
    table = _load(str(config_file))
    key = shape_key(m, k, n)
    for gpu in _gpus(gpu_rows):
        row = table.get(gpu, {}).get(kernel, {}).get(key)
        if row is not None:
            return dict(row)
    return None


def lookup(
    config_file: Path, kernel: str, m: int, k: int, n: int, fallback: dict[str, Any],
    gpu_rows: bool = True,
) -> dict[str, Any]:
    """Return the stored config dict for ``kernel`` at shape ``(m, k, n)`` on the current GPU
    (``gpu_rows=False``: the ``"default"`` table only, as on a GPU nobody tuned for)."""
    row = lookup_row(config_file, kernel, m, k, n, gpu_rows)
    if row is not None:
        return row
    table = _load(str(config_file))
    for gpu in _gpus(gpu_rows):
        per_kernel = table.get(gpu, {}).get(kernel, {})
        if "default" in per_kernel:
            return dict(per_kernel["default"])
    return dict(fallback)


def store(config_file: Path, gpu: str, kernel: str, rows: dict[str, dict[str, Any]]) -> None:
    """Merge ``rows`` (``"<M-bucket>,<K>,<N>" -> config``) into ``config_file`` under ``gpu`` / ``kernel``
    (other rows kept; written atomically)."""
    p = Path(config_file)
    table = json.loads(p.read_text()) if p.exists() else {}
    table.setdefault(gpu, {}).setdefault(kernel, {}).update(rows)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(p)
    _load.cache_clear()

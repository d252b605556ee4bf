"""The device mesh of sharded sampling: named axes ``data`` (rows of the model batch: prompts and the
CFG pair) and ``seq`` (tokens: spatial tokens of an image, frames × tokens of a video).

A mesh is a plain :class:`jax.sharding.Mesh` (axis types ``Auto``: the partitioner places what no
``shard_map`` pins); :func:`make_mesh` builds one from a device count, an explicit device list or a
``"data=2,seq=4"`` text, :func:`as_mesh` accepts any of those (and an existing mesh) wherever the API
takes ``mesh=``. An axis a mesh lacks counts as size 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from vidq_jax.errors import VidqError

DATA, SEQ = "data", "seq"
AXES: tuple[str, str] = (DATA, SEQ)


class MeshError(VidqError):
    """A mesh that cannot run the work: wrong device count, an axis that does not divide the batch rows
    or the attention heads, a malformed ``--mesh`` text. One line naming the culprit and the allowed values."""


def axis_size(mesh: Mesh, name: str) -> int:
    """Size of axis ``name`` of ``mesh`` (1 when the mesh has no such axis)."""
    return int(mesh.shape[name]) if name in mesh.axis_names else 1


def axis(mesh: Mesh, name: str) -> str | None:
    """``name`` when ``mesh`` shards over it (size > 1), else ``None`` (the spec entry of a replicated dim)."""
    return name if axis_size(mesh, name) > 1 else None


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,seq=4"`` (either axis may be left out: size 1) → ``{"data": 2, "seq": 4}``."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        m = re.fullmatch(r"([a-z]+)\s*=\s*(\d+)", part)
        if m is None or m.group(1) not in AXES or m.group(1) in sizes or int(m.group(2)) < 1:
            raise MeshError(f"--mesh {text!r}: expected comma-separated axis=size with axes {AXES} once each and "
                            "sizes >= 1, e.g. data=2,seq=4")
        sizes[m.group(1)] = int(m.group(2))
    if not sizes:
        raise MeshError(f"--mesh {text!r}: empty; give e.g. data=2,seq=4")
    return sizes


def default_shape(devices: int, rows: int | None = None) -> tuple[int, int]:
    """``(data, seq)`` for ``devices`` devices: data parallel over as many of the ``rows`` batch rows as
    the device count allows (no communication at all), the remaining factor sequence parallel."""
    data = math.gcd(devices, rows) if rows else 1
    return data, devices // data


def make_mesh(devices: int | Sequence[Any] | None = None, *, data: int | None = None, seq: int | None = None,
              rows: int | None = None) -> Mesh:
    """A ``(data, seq)`` mesh.

    ``devices``: a count (the first that many of ``jax.devices()``: all processes' devices in a
    multi-host run), an explicit device list, or ``None`` (all devices). ``data`` / ``seq``: axis sizes
    (one may be left out and is then derived; both out: :func:`default_shape` over ``rows`` batch rows).
    """
    if devices is None or isinstance(devices, (int, np.integer)):
        avail = jax.devices()
        n = len(avail) if devices is None else int(devices)
        if not 1 <= n <= len(avail):
            raise MeshError(f"devices={n}: this run has {len(avail)} device(s); choose 1..{len(avail)}")
        devs = list(avail[:n])
    else:
        devs = list(devices)
        if not devs:
            raise MeshError("devices: an empty device list")
    n = len(devs)
    given = ", ".join(f"{k}={v}" for k, v in ((DATA, data), (SEQ, seq)) if v is not None)
    if data is None and seq is None:
        data, seq = default_shape(n, rows)
    elif data is None:
        data = n // seq if seq and n % seq == 0 else 0
    elif seq is None:
        seq = n // data if data and n % data == 0 else 0
    if not data or not seq or data * seq != n:
        raise MeshError(f"mesh {given} does not fit {n} device(s): data × seq must be {n} (data in {divisors(n)})")
    return Mesh(np.asarray(devs, dtype=object).reshape(data, seq), AXES, axis_types=(AxisType.Auto,) * 2)


def as_mesh(mesh: Any, *, rows: int | None = None) -> Mesh:
    """A :class:`~jax.sharding.Mesh` from what the API accepts as ``mesh=``: a mesh (returned as is), a
    device count, a ``"data=2,seq=4"`` text, a ``{"data": 2, "seq": 4}`` dict or a device list."""
    if isinstance(mesh, Mesh):
        unknown = [a for a in mesh.axis_names if a not in AXES and mesh.shape[a] > 1]
        if unknown:
            raise MeshError(f"mesh axes {unknown} are not sampling axes; name them {AXES}")
        return mesh
    if isinstance(mesh, bool):
        raise MeshError(f"mesh={mesh!r}: give a Mesh, a device count, 'data=D,seq=S' or a device list")
    if isinstance(mesh, (int, np.integer)):
        return make_mesh(int(mesh), rows=rows)
    if isinstance(mesh, str):
        sizes = parse_mesh(mesh)
        n = math.prod(sizes.values())
        return make_mesh(n, data=sizes.get(DATA, 1), seq=sizes.get(SEQ, 1))
    if isinstance(mesh, dict):
        return make_mesh(math.prod(mesh.values()), data=mesh.get(DATA, 1), seq=mesh.get(SEQ, 1))
    if isinstance(mesh, Sequence):
        return make_mesh(list(mesh), rows=rows)
    raise MeshError(f"mesh={mesh!r}: give a Mesh, a device count, 'data=D,seq=S' or a device list")


def describe(mesh: Mesh) -> str:
    """``"data=2 × seq=4 (8 × cpu)"``."""
    devs = mesh.devices.reshape(-1)
    kind = getattr(devs[0], "device_kind", devs[0].platform)
    return f"data={axis_size(mesh, DATA)} × seq={axis_size(mesh, SEQ)} ({devs.size} × {kind})"


__all__ = ["AXES", "DATA", "SEQ", "MeshError", "as_mesh", "axis", "axis_size", "default_shape", "describe",
           "divisors", "make_mesh", "parse_mesh"]

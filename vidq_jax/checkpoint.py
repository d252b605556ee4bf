"""Saving and loading converted (or quantized) models: orbax params + ``model.json``.

Layout of a model folder::

    OUT_DIR/model.json   {"format": "vidq-jax/1", "arch": ..., "model": "PixArt", "config": {...}}
    OUT_DIR/params/      orbax checkpoint of the params pytree (int8 stays int8)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "vidq-jax/1"


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def params_nbytes(params: Any) -> int:
    """Total bytes of all array leaves (quantized records count their int payload and scales)."""
    return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in jax.tree_util.tree_leaves(params)))


def save_model(out_dir: str | os.PathLike, model, params: Any, *, arch: str, extra: dict | None = None) -> Path:
    """Write ``params`` (orbax) and the model description; returns the folder."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params_dir = out / "params"
    if params_dir.exists():
        import shutil

        shutil.rmtree(params_dir)
    ckptr = _orbax().StandardCheckpointer()
    ckptr.save(params_dir, params)
    ckptr.wait_until_finished()
    meta = {
        "format": FORMAT,
        "arch": arch,
        "model": type(model).__name__,
        "config": model.config.to_dict(),
        "param_bytes": params_nbytes(params),
    }
    meta.update(extra or {})
    (out / "model.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    return out


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_model(model_dir: str | os.PathLike, *, target: Any = None, **module_kwargs):
    """Load ``(model, params, meta)`` from a folder written by :func:`save_model`.

    ``target``: an abstract/concrete params pytree to restore into (needed for custom pytree records
    such as quantized weights); by default the plain nested dict of arrays is restored.
    """
    from models import build_model

    folder = Path(model_dir).resolve()
    meta_file = folder / "model.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{folder}: no model.json (not a vidq-jax model folder; use `vidq convert` first)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    model = build_model(meta["model"], meta["config"], **module_kwargs)
    ckptr = _orbax().StandardCheckpointer()
    params = ckptr.restore(folder / "params", target) if target is not None else ckptr.restore(folder / "params")
    return model, params, meta

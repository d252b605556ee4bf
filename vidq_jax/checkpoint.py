"""Model folders: orbax params + ``model.json``, written atomically, loaded by one loader.

Layout of a model folder::

    OUT_DIR/model.json   {"format": "vidq-jax/1", "arch": ..., "model": "PixArt", "config": {...},
                          "quantization": {...}  (quantized folders only, see vidq_jax.quant.io)}
    OUT_DIR/params/      orbax checkpoint of the params pytree (int8 stays int8)

A folder is a model only when both exist. :func:`save_model` never writes into ``OUT_DIR`` piecemeal:
it builds the whole folder in a hidden sibling ``.OUT_DIR.partial-<pid>`` (``params/`` first,
``model.json`` last) and then puts it in place with one rename — onto a missing or empty folder, or,
replacing a model (``overwrite=True``), by atomically exchanging the two folders after hard-linking
the folder's foreign files (anything but ``model.json`` and ``params/``) into the new one. So at
every instant ``OUT_DIR`` holds either the previous complete model or the new complete one, and a
user's own files in it stay; a killed writer leaves only the hidden sibling, removed by the next write.
Where the file system cannot exchange two folders, the previous one is renamed aside to
``.OUT_DIR.old-<pid>`` for the instant before the new one is renamed in (a kill in between leaves
``OUT_DIR`` missing; the next write puts the previous model back first).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT = "vidq-jax/1"
OWN_ENTRIES = ("model.json", "params")  # everything else in a model folder belongs to the user


class OutputFolderError(FileExistsError):
    """The output folder cannot be written as asked (not empty, not a model folder, the input itself)."""


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def params_nbytes(params: Any) -> int:
    """Total bytes of all array leaves (quantized records count their int payload and scales)."""
    return int(sum(np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes for x in jax.tree_util.tree_leaves(params)))


def disk_bytes(folder: str | os.PathLike) -> int:
    """Bytes of every file under ``folder`` (what the checkpoint really occupies)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def read_meta(folder: str | os.PathLike) -> dict:
    """``model.json`` of a complete model folder; a one-line ``FileNotFoundError``/``ValueError`` otherwise."""
    folder = Path(folder)
    meta_file = folder / "model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder}: no model.json (not a vidq-jax model folder; use `vidq convert` first)")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r} "
                         f"(expected {FORMAT})")
    if not (folder / "params").is_dir():
        raise FileNotFoundError(f"{folder}: model.json without params/ (an incomplete model folder)")
    return meta


def check_output(out_dir: str | os.PathLike, *, overwrite: bool = False,
                 source: str | os.PathLike | None = None) -> Path:
    """The resolved output folder if a model may be written there, else :class:`OutputFolderError`.

    Allowed: a missing or empty folder; with ``overwrite``, a model folder (its model is replaced,
    its other files stay). Never the input ``source`` itself (symlinks and relative paths resolved).
    Cheap: commands call it before their work, :func:`save_model` again before writing.
    """
    out = Path(out_dir).resolve()
    if source is not None and out.exists() and os.path.exists(source) and os.path.samefile(source, out):
        raise OutputFolderError(f"{out_dir}: the output is the input {source}; write the model to another folder")
    if not out.exists():
        return out
    if not out.is_dir():
        raise OutputFolderError(f"{out_dir}: exists and is not a folder")
    if not any(out.iterdir()):
        return out
    if not overwrite:
        raise OutputFolderError(f"{out_dir}: folder exists and is not empty; pass --overwrite (overwrite=True) "
                                f"to replace the model in it")
    try:
        read_meta(out)
    except (OSError, ValueError):
        raise OutputFolderError(f"{out_dir}: not empty and not a vidq-jax model folder; --overwrite only replaces "
                                f"a model (choose a new or empty folder)") from None
    return out


def _reached(step: str) -> None:
    """Called by :func:`save_model` after each step ("params", "complete", "linked", "aside", "swapped");
    a no-op that the interruption tests replace to stop the writer exactly there."""


def save_model(out_dir: str | os.PathLike, model, params: Any, *, arch: str, extra: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write ``params`` (orbax) and the model description as one folder; returns the folder.

    An existing non-empty ``out_dir`` is refused unless ``overwrite`` (then only its ``model.json``
    and ``params/`` are replaced). See the module docstring for what an interruption leaves.
    """
    meta = {
        "format": FORMAT,
        "arch": arch,
        "model": type(model).__name__,
        "config": model.config.to_dict(),
        "param_bytes": params_nbytes(params),
    }
    meta.update(extra or {})
    text = json.dumps(meta, indent=2, default=_json_default)  # fail on bad metadata before touching the disk

    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    check_output(out, overwrite=overwrite)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        tmp.mkdir()
        ocp = _orbax()
        ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(tmp / "params", args=ocp.args.StandardSave(params))
        _reached("params")
        (tmp / "model.json").write_text(text)  # last: the folder is complete
        _reached("complete")
        if not out.exists():
            os.rename(tmp, out)
        else:
            _link_foreign_entries(out, tmp)
            _reached("linked")
            try:
                _exchange(tmp, out)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                    raise
                os.rename(out, aside)  # no atomic exchange here: the previous folder steps aside
                _reached("aside")
                os.rename(tmp, out)
        _reached("swapped")
    finally:  # whatever sits at tmp now is garbage: the unfinished new folder or the replaced one
        if aside.exists() and not out.exists():
            os.rename(aside, out)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _link_foreign_entries(out: Path, new: Path) -> None:
    """Hard-link (copy where linking fails) every entry of ``out`` but the model's own into ``new``."""
    def link(src, dst):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    for entry in out.iterdir():
        if entry.name in OWN_ENTRIES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link)
        else:
            link(entry, new / entry.name)
    shutil.copymode(out, new)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``OSError`` ENOSYS/EINVAL if unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _recover(out: Path) -> None:
    """Clean up after writers of ``out`` that were killed (or were this process): remove their hidden
    partial folders, and put back a previous model left aside (``.NAME.old-<pid>``) when ``out`` is missing."""
    prefix = f".{out.name}."
    for sibling in out.parent.iterdir():
        if not sibling.name.startswith(prefix):
            continue
        kind, _, pid = sibling.name[len(prefix):].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _another_live_process(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.rename(sibling, out)
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def _another_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_model(model_dir: str | os.PathLike, **module_kwargs: Any) -> tuple[Any, Any, dict]:
    """``(model, params, meta)`` of a model folder, float or quantized alike.

    ``model.apply({"params": params}, **inputs)`` runs either: a quantized folder (``model.json``
    with a ``"quantization"`` entry) restores into its quantized records (see
    :func:`vidq_jax.quant.io.quantized_target`). ``module_kwargs`` (e.g. ``dtype``) go to the module.
    """
    from models import build_model

    folder = Path(model_dir).resolve()
    meta = read_meta(folder)
    model = build_model(meta["model"], meta["config"], **module_kwargs)
    ckptr = _orbax().StandardCheckpointer()
    if meta.get("quantization"):
        from vidq_jax.quant.io import quantized_target

        params = ckptr.restore(folder / "params", quantized_target(model, meta))
    else:
        params = ckptr.restore(folder / "params")
    return model, params, meta


def save_quantized(out_dir: str | os.PathLike, model, qparams: Any, *, arch: str, config, plan=None,
                   preset: str | None = None, extra: dict | None = None, overwrite: bool = False) -> Path:
    """:func:`save_model` of quantized params with their recipe (``QuantConfig``, optional
    ``MixedPrecisionPlan``, preset name) in ``model.json``, from which :func:`load_model` rebuilds them."""
    from vidq_jax.quant.io import quantization_entry

    return save_model(out_dir, model, qparams, arch=arch, overwrite=overwrite,
                      extra={**(extra or {}), "quantization": quantization_entry(config, plan, preset)})


def load_quantized(model_dir: str | os.PathLike, **module_kwargs: Any) -> tuple[Any, Any, dict]:
    """:func:`load_model` of a folder that must be quantized (written by :func:`save_quantized` / ``vidq quantize``)."""
    model, qparams, meta = load_model(model_dir, **module_kwargs)
    if not meta.get("quantization"):
        raise ValueError(f"{model_dir}: not a quantized model folder (model.json has no 'quantization' entry)")
    return model, qparams, meta

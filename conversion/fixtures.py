"""Golden-fixture cases (``manifest.json`` + checkpoint + ``inputs.npz`` + ``outputs.npz``).

A case records how the ORIGINAL PyTorch class was called (positional ``args``, ``kwargs`` whose string
values are npz keys and whose dict values are resolved recursively, an optional ``method`` other than
forward, and ``extra_outputs``: further calls of the same model). :func:`model_inputs` translates a
denoiser's forward call into this package's model convention (channels-last ``x``, ``y (B, L, C)``,
extras by keyword); other calls (the methods of autoencoders and text encoders) go to the Flax method
the arch declares (:attr:`models.families.Arch.methods`) with every float array of rank >= 4 moved
channels-last. So any folder in the same format runs through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.families import Family, owner_of_arch

# Original argument names -> this package's names.
_RENAME = {
    "hidden_states": "x",
    "encoder_hidden_states": "y",
    "encoder_attention_mask": "mask",
    "resolution": "img_hw",
}
# Arguments of the originals that carry no data for the math here.
_DROP = {"return_dict", "cross_attention_kwargs", "attention_mask", "num_frames", "ar"}
# Dict-valued arguments whose entries become keyword conditions.
_FLATTEN = {"data_info", "added_cond_kwargs"}


def default_fixtures_dir() -> Path:
    """``$VIDQ_FIXTURES`` or ``<repo>/../shared/fixtures``."""
    env = os.environ.get("VIDQ_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


@dataclasses.dataclass
class Case:
    name: str
    folder: Path
    manifest: dict

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def checkpoint(self) -> Path:
        return self.folder / self.manifest["checkpoint"]

    @property
    def tolerance(self) -> float:
        return float(self.manifest.get("tolerance", 1e-5))

    @property
    def layout(self) -> str:
        return self.manifest.get("layout", "NCHW")

    def inputs(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / self.manifest.get("inputs", "inputs.npz")) as z:
            return {k: z[k] for k in z.files}

    def expected(self, key: str = "out") -> np.ndarray:
        with np.load(self.folder / self.manifest.get("outputs", "outputs.npz")) as z:
            return z[key]

    def calls(self) -> dict[str, dict]:
        """``{output key: call}``: the primary call under ``"out"``, then every ``extra_outputs`` entry."""
        extra = {k: v["call"] for k, v in (self.manifest.get("extra_outputs") or {}).items()}
        return {"out": self.manifest["call"], **extra}


def find_cases(root: str | os.PathLike | None = None) -> list[Case]:
    """Every sub-folder of ``root`` holding a ``manifest.json`` (sorted by name)."""
    root = Path(root) if root else default_fixtures_dir()
    if not root.is_dir():
        return []
    cases = []
    for mf in sorted(root.glob("*/manifest.json")):
        cases.append(Case(mf.parent.name, mf.parent, json.loads(mf.read_text())))
    return cases


def _resolve(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, str):
        if value not in arrays:
            raise KeyError(f"manifest names input {value!r}, which inputs.npz does not hold ({sorted(arrays)})")
        return arrays[value]
    if isinstance(value, dict):
        return {k: _resolve(v, arrays) for k, v in value.items()}
    return value


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """``(B, C, *spatial)`` → ``(B, *spatial, C)``."""
    return np.moveaxis(x, 1, -1)


def to_channels_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def model_inputs(case: Case, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The case's (denoiser forward) call translated to this package's model keyword arguments."""
    arrays = case.inputs() if arrays is None else arrays
    call = case.manifest["call"]
    names = owner_of_arch(case.arch).arch(case.arch).forward_args
    raw: dict[str, Any] = {}
    for i, key in enumerate(call.get("args", [])):
        raw[names[i]] = _resolve(key, arrays)
    for k, v in call.get("kwargs", {}).items():
        raw[k] = _resolve(v, arrays)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _FLATTEN:
            for kk, vv in (v or {}).items():
                out[_RENAME.get(kk, kk)] = vv
            continue
        if k in _DROP or v is None:
            continue
        out[_RENAME.get(k, k)] = v
    out["x"] = to_channels_last(np.asarray(out["x"]))
    return out


def _channels_last_if_spatial(v: Any) -> Any:
    """PyTorch images/videos (float arrays of rank >= 4) are channels-first; this package's are channels-last."""
    if isinstance(v, np.ndarray) and v.ndim >= 4 and v.dtype.kind == "f":
        return to_channels_last(v)
    return v


def call_model(case: Case, model, params, key: str = "out") -> np.ndarray:
    """Run the call of output ``key`` (``"out"`` or an ``extra_outputs`` name) on a converted model;
    returns the output in the manifest's (PyTorch) layout."""
    call = case.calls()[key]
    method = call.get("method", "")
    owner = owner_of_arch(case.arch)
    if not method and isinstance(owner, Family):
        out = np.asarray(model.apply({"params": params}, **model_inputs(case)))
    else:
        methods = owner.arch(case.arch).methods
        if method not in methods:
            raise NotImplementedError(f"{case.name}: arch {case.arch!r} declares no port of the original method "
                                      f"{method or 'forward'!r} (Arch.methods: {sorted(methods)})")
        arrays = case.inputs()
        args = [_channels_last_if_spatial(_resolve(k, arrays)) for k in call.get("args", [])]
        kwargs = {k: _channels_last_if_spatial(_resolve(v, arrays) if isinstance(v, (str, dict)) else v)
                  for k, v in call.get("kwargs", {}).items() if k not in _DROP_ALWAYS}
        name = methods[method]
        out = np.asarray(model.apply({"params": params}, *args, **kwargs, method=name or None))
    return to_channels_first(out) if out.ndim >= 4 else out


# Arguments of every original call that carry no data (the Flax methods return arrays, never dicts).
_DROP_ALWAYS = {"return_dict"}


def _converted(case: Case, model, params):
    if model is None:
        from conversion import load_checkpoint

        model, params = load_checkpoint(case.checkpoint, case.arch, case.manifest.get("config"))
    return model, params


def _error(case: Case, key: str, out: np.ndarray) -> float:
    ref = case.expected(key)
    if out.shape != ref.shape:
        raise AssertionError(f"{case.name}: output {key!r} shape {out.shape} != reference {ref.shape}")
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def case_errors(case: Case, model=None, params=None) -> dict[str, float]:
    """Convert (unless given) and run every call of the case; ``{output key: relative L2 error}``."""
    model, params = _converted(case, model, params)
    return {key: _error(case, key, call_model(case, model, params, key)) for key in case.calls()}


def run_case(case: Case, model=None, params=None) -> tuple[np.ndarray, float]:
    """Convert (unless given), run the case's primary call, return ``(output in the manifest layout, rel. L2
    error)``. :func:`case_errors` also runs the ``extra_outputs`` calls."""
    model, params = _converted(case, model, params)
    out = call_model(case, model, params)
    return out, _error(case, "out", out)


def load_xl_keys(arch: str, root: str | os.PathLike | None = None) -> dict:
    """``xl_keys/<arch>.json``: the key/shape listing of a released XL checkpoint."""
    root = Path(root) if root else default_fixtures_dir()
    return json.loads((root / "xl_keys" / f"{arch}.json").read_text())


def synthesize_state_dict(listing: dict, dtype=np.float32) -> dict[str, np.ndarray]:
    """Zero-copy stand-in state dict (``np.broadcast_to`` views) with every listed key and shape."""
    scalar = np.zeros((), dtype)
    return {e["key"]: np.broadcast_to(scalar, tuple(e["shape"])) for e in listing["keys"]}


def sampling_inputs(case: Case, n: int = 2) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Conditioning of the case's first ``n`` rows (everything but ``x``/``timestep``) and the latent
    shape, for sampling the fixture model."""
    inputs = model_inputs(case)
    x = inputs.pop("x")
    inputs.pop("timestep", None)
    cond = {}
    for k, v in inputs.items():
        v = np.asarray(v)
        if k == "y" and v.ndim == 4:
            v = v[:, 0]
        cond[k] = v[:n] if v.ndim else v
    return cond, (n, *x.shape[1:])

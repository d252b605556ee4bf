"""Reading PyTorch-world checkpoints into ``{key: numpy array}`` without keeping torch tensors.

Formats: ``.pth``/``.pt``/``.bin`` (torch pickle; plain state dict or wrapped in ``state_dict`` /
``ema`` / ``model`` / ``module``; needs torch, imported lazily), ``.safetensors`` (read with a small
built-in reader: no torch, no safetensors package, bf16 kept as ``ml_dtypes.bfloat16``), sharded
checkpoints (``*.safetensors.index.json``, ``*.bin.index.json``), and folders (diffusers ``save_pretrained`` /
Hugging Face model folders with ``config.json``; a diffusers pipeline root with ``transformer/``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from conversion.errors import ConversionError

StateDict = dict[str, np.ndarray]

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "pytorch_model.bin.index.json",
)


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def read_safetensors(path: str | os.PathLike) -> StateDict:
    """Read a ``.safetensors`` file into numpy arrays (memory-mapped, zero-copy where possible)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    base = 8 + n
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > base else np.zeros(0, np.uint8)
    out: StateDict = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (start, end) = _tensor_entry(path, key, info)
        if base + end > size:
            raise ConversionError(f"{path}: truncated file (tensor {key!r} ends at byte {base + end}, file has {size})")
        out[key] = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(shape)
    return out


def _tensor_entry(path: Path, key: str, info: Any) -> tuple[Any, tuple[int, ...], tuple[int, int]]:
    """``(dtype, shape, (start, end))`` of one safetensors header entry, every field checked
    (one-line :class:`ConversionError` naming the tensor otherwise)."""

    def bad(what: str) -> ConversionError:
        return ConversionError(f"{path}: not a readable safetensors file (tensor {key!r}: {what})")

    if not isinstance(info, dict):
        raise bad("its header entry is not an object")
    dt = info.get("dtype")
    dtype = _bf16() if dt == "BF16" else _ST_DTYPES.get(dt) if isinstance(dt, str) else None
    if dtype is None:
        raise ConversionError(f"{path}: tensor {key!r} has unsupported dtype {dt}")

    def ints(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)

    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not ints(shape):
        raise bad(f"shape {shape!r} is not a list of sizes")
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad(f"data_offsets {offsets!r} are not [start, end]")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"shape {shape} needs {nbytes} bytes, data_offsets {offsets} hold {offsets[1] - offsets[0]}")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.uint16).numpy().view(_bf16())
    return t.numpy()


def _unwrap(obj: Any, path: Path) -> dict:
    """Find the state dict inside a torch checkpoint object (flat, or under a known wrapper key)."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if any(hasattr(v, "shape") for v in obj.values()):
        return obj
    for wrapper in ("state_dict", "ema", "model", "module"):
        if isinstance(obj.get(wrapper), dict):
            return _unwrap(obj[wrapper], path)
    raise ConversionError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")


def read_torch(path: str | os.PathLike) -> StateDict:
    """Read a torch pickle checkpoint (``weights_only``) into numpy arrays."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: reading .pth/.bin checkpoints needs PyTorch; install the converter extra: pip install 'vidq-jax[torch]'"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({msg[:200]})") from None
    sd = _unwrap(obj, path)
    out: StateDict = {}
    for k, v in sd.items():
        if not hasattr(v, "shape"):
            continue  # metadata such as step counters
        k = k[len("module.") :] if k.startswith("module.") else k
        out[k] = _torch_to_numpy(v)
    if not out:
        raise ConversionError(f"{path}: contains no tensors")
    return out


def _read_shards(index_path: Path) -> StateDict:
    """The state dict of a sharded checkpoint: its ``*.index.json`` ``weight_map`` names the shards
    (``.safetensors`` or torch ``.bin``), read next to it; a missing shard is one error naming it."""
    try:
        index = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
            raise ValueError("weight_map is not an object of shard file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{index_path}: not a sharded-checkpoint index ({e})") from None
    shards = sorted(set(index.values()))
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise ConversionError(f"{index_path}: shard file(s) missing next to the index: {', '.join(missing)}")
    state: StateDict = {}
    for shard in shards:
        path = index_path.parent / shard
        state.update(read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path))
    return state


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict | None, Path]:
    """Read any supported checkpoint. Returns ``(state_dict, config_json_or_None, weights_path)``."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    config = None
    if path.is_dir():
        if (path / "transformer").is_dir() and not (path / "config.json").exists():
            path = path / "transformer"
        cfg_file = path / "config.json"
        if cfg_file.exists():
            try:
                config = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as e:
                raise ConversionError(f"{cfg_file}: not valid JSON ({e})") from None
        for name in _WEIGHT_FILES:
            if (path / name).exists():
                weights = path / name
                break
        else:
            raise ConversionError(f"{path}: folder holds none of the weight files {', '.join(_WEIGHT_FILES)}")
    else:
        weights = path
        sibling = path.parent / "config.json"
        if sibling.exists() and path.suffix == ".safetensors":
            try:
                config = json.loads(sibling.read_text())
            except (OSError, ValueError) as e:
                raise ConversionError(f"{sibling}: not valid JSON ({e})") from None
    name = weights.name
    if name.endswith(".index.json"):
        state = _read_shards(weights)
    elif weights.suffix == ".safetensors":
        state = read_safetensors(weights)
    elif weights.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        state = read_torch(weights)
    else:
        # unknown suffix: sniff the content
        with open(weights, "rb") as f:
            head = f.read(8)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            state = read_torch(weights)
        else:
            state = read_safetensors(weights)
    return state, config, weights

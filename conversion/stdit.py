"""Open-Sora STDiT (1.0, flat ``.pth``) and STDiT3 (1.2, HF ``config.json`` + ``model.safetensors``)
state dicts → Flax ``(model, numpy params)``.

Configuration is resolved as: release defaults < values the tensors determine < the caller's
``config`` (original constructor / ``STDiT3Config`` names; for a folder, ``load_checkpoint`` has
already merged its ``config.json`` under the caller's values). Whatever the shapes then contradict
is reported by validation, naming every missing, unexpected and mis-shaped key at once.

Accepted and dropped (recomputed by the model): ``pos_embed``, ``pos_embed_temporal`` (1.0),
``rope.freqs`` (1.2). For Open-Sora 1.0 the stored tables, when present, also determine the input
size and the ``space_scale`` / ``time_scale`` that were used to build them.

ViDiT-Q's split checkpoints (``*.attn.q/k/v.*`` / ``*.attn_temp.q/k/v.*`` instead of the fused
``qkv``) are accepted: the three row blocks are concatenated back into ``qkv``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any

import numpy as np

from conversion.common import (
    XL_HIDDEN,
    assumed_note,
    count_blocks,
    deliver_notes,
    emit_notes,
    guess_num_heads,
    param_shapes,
    sincos_2d_grid,
    sincos_position,
    snap_fraction,
    state_to_params,
)
from conversion.errors import ConversionError, ConversionWarning
from conversion.io import StateDict
from models.stdit import STDIT_PRESETS, STDiT, STDiTConfig
from models.stdit3 import STDiT3, STDiT3Config

_IGNORABLE_STDIT = (r"pos_embed", r"pos_embed_temporal")
_IGNORABLE_STDIT3 = (r"rope\.freqs",)

_SPLIT_QKV = re.compile(r"^(.*\.(?:attn|attn_temp))\.([qkv])\.(weight|bias)$")


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------


def fuse_split_qkv(state: StateDict) -> StateDict:
    """ViDiT-Q split layout → fused: ``P.q.w``, ``P.k.w``, ``P.v.w`` → ``P.qkv.w`` (rows [q; k; v]).

    Only complete triples are fused; incomplete ones are left as they are, so validation names
    both the stray parts (unexpected) and the fused key (missing)."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in state:
        m = _SPLIT_QKV.match(key)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = key
    if not groups:
        return state
    out = dict(state)
    for (prefix, leaf), parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            continue
        fused = f"{prefix}.qkv.{leaf}"
        if fused in out:
            continue  # both layouts present: leave the parts as unexpected keys
        tensors = [out.pop(parts[p]) for p in "qkv"]
        try:
            out[fused] = np.concatenate(tensors, axis=0)
        except ValueError:  # shapes disagree: keep the parts, validation will report them
            for p, t in zip("qkv", tensors):
                out[parts[p]] = t
    return out


def _infer_common(state: StateDict, block: str) -> dict[str, Any]:
    """What the tensor shapes determine for both families (``block`` = prefix of block 0)."""
    out: dict[str, Any] = {}
    w = state.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 5:
        out.update(hidden_size=int(w.shape[0]), in_channels=int(w.shape[1]))
        out["patch_size"] = tuple(int(s) for s in w.shape[2:])
    fc1 = state.get("y_embedder.y_proj.fc1.weight")
    if fc1 is not None and fc1.ndim == 2:
        out["caption_channels"] = int(fc1.shape[1])
    emb = state.get("y_embedder.y_embedding")
    if emb is not None and emb.ndim == 2:
        out["model_max_length"] = int(emb.shape[0])
    hidden = out.get("hidden_size")
    mlp = state.get(f"{block}.mlp.fc1.weight")
    if hidden and mlp is not None and mlp.ndim == 2:
        out["mlp_ratio"] = mlp.shape[0] / hidden
    lin = state.get("final_layer.linear.weight")
    if lin is not None and lin.ndim == 2 and "patch_size" in out:
        out_ch = lin.shape[0] // math.prod(out["patch_size"])
        out["pred_sigma"] = out_ch == 2 * out["in_channels"]
    return out


def _infer_stdit_tables(state: StateDict, hidden: int) -> dict[str, Any]:
    """Token grid / frame count and ``space_scale`` / ``time_scale`` from the stored ``pos_embed`` /
    ``pos_embed_temporal`` (the tables the constructor computed: positions ``index / scale``). A table
    that is not a sin-cos table (e.g. zeros) gives its shape only: the frame count, or a square grid."""
    out: dict[str, Any] = {}
    pe = state.get("pos_embed")
    if pe is not None and pe.ndim == 3 and pe.shape[-1] == hidden and hidden % 4 == 0:
        table = pe[0]
        read = sincos_2d_grid(table)
        side = math.isqrt(table.shape[0])
        grid = read or ((side, side) if side * side == table.shape[0] else None)
        if grid is not None:
            out["_spatial_grid"] = grid
        quarter = hidden // 4
        if read is not None and read[1] > 1:
            # row 1 = column 1 of the first grid row; first quarter = sin of the column position
            p = sincos_position(table, 1, quarter - 1, 10000.0 ** (-(quarter - 1) / quarter))
            if p is not None:
                out["space_scale"] = snap_fraction(1.0 / p, pe.dtype)
    pt = state.get("pos_embed_temporal")
    if pt is not None and pt.ndim == 3 and pt.shape[-1] == hidden and hidden % 2 == 0:
        table = pt[0]
        out["_frames"] = int(table.shape[0])
        half = hidden // 2
        if table.shape[0] > 1:
            p = sincos_position(table, 1, half - 1, 10000.0 ** (-(half - 1) / half))
            if p is not None:
                out["time_scale"] = snap_fraction(1.0 / p, pt.dtype)
    return out


def _to_params(
    state: StateDict,
    shapes: dict,
    buffers: dict[str, tuple[int, ...]],
    ignorable: tuple[str, ...],
    source: str,
    hint: str,
) -> dict:
    """:func:`state_to_params`, with the optional recomputable ``buffers`` (dropped) also
    shape-checked, so that ONE error names every missing, unexpected and mis-shaped key."""
    bad = [
        (k, tuple(state[k].shape), want)
        for k, want in buffers.items()
        if k in state and tuple(state[k].shape) != want
    ]
    try:
        params = state_to_params(state, shapes, ignorable=ignorable, source=source, hint=hint)
    except ConversionError as e:
        if not bad:
            raise
        raise ConversionError(
            f"{source} does not match the model ({hint})",
            missing=e.missing,
            unexpected=e.unexpected,
            mismatched=e.mismatched + bad,
        ) from None
    if bad:
        raise ConversionError(
            f"{source} does not match the model ({hint}; the recomputed buffers imply another configuration, "
            "e.g. input_size / num_heads)",
            mismatched=bad,
        )
    return params


# ------------------------------------------------------------------------------------------------
# Open-Sora 1.0 STDiT
# ------------------------------------------------------------------------------------------------


def _triple(given: Any, default: tuple[int, int, int]) -> tuple:
    """A (T, H, W) value of the caller's config, or ``default`` when absent or not a triple (the
    config dataclass then reports the bad value)."""
    return tuple(given) if isinstance(given, (list, tuple)) and len(given) == 3 else default


def stdit_config(state: StateDict, config: dict | None, source: str = "checkpoint",
                 notes: list[Warning] | None = None) -> STDiTConfig:
    """Resolve the STDiT configuration: XL defaults < shapes / stored tables < ``config``. Values
    none of them determines are assumed with a ``UserWarning`` naming them: ``num_heads`` of a
    non-XL width, and without stored tables the input size and positional scales (for an XL model
    with a known input size, its release's scales: :data:`models.stdit.STDIT_PRESETS`). ``notes``:
    collect the warnings there instead."""
    pending: list[Warning] = []
    fields = dataclasses.asdict(STDiTConfig())
    inferred = _infer_common(state, "blocks.0")
    depth = count_blocks(state, "blocks")
    if depth:
        inferred["depth"] = depth
    fields.update(inferred)
    tables = _infer_stdit_tables(state, fields["hidden_size"])
    user = dict(config or {})
    xl = fields["hidden_size"] == XL_HIDDEN
    assumed: dict[str, Any] = {}
    if not xl:
        fields["num_heads"] = guess_num_heads(fields["hidden_size"])
        assumed["num_heads"] = fields["num_heads"]
    p = _triple(user.get("patch_size"), fields["patch_size"])
    t, h, w = fields["input_size"]
    if "_frames" in tables:
        t = tables["_frames"] * p[0]
    if "_spatial_grid" in tables:
        h, w = tables["_spatial_grid"][0] * p[1], tables["_spatial_grid"][1] * p[2]
    fields["input_size"] = (t, h, w)
    if "_frames" not in tables or "_spatial_grid" not in tables:
        assumed["input_size"] = fields["input_size"]
    input_size = _triple(user.get("input_size"), fields["input_size"])
    release = next((c for c in STDIT_PRESETS.values() if c.input_size == input_size), None) if xl else None
    for name in ("space_scale", "time_scale"):
        if name in tables:
            if name in user and not math.isclose(float(user[name]), tables[name], rel_tol=1e-3):
                pending.append(ConversionWarning(
                    f"{source}: config {name}={user[name]} but the stored positional table was built with "
                    f"{name}≈{tables[name]:.6g}; using the config value"
                ))
            fields[name] = tables[name]
        elif release is not None:
            fields[name] = getattr(release, name)
        else:
            assumed[name] = fields[name]
    pending += assumed_note(source, {k: v for k, v in assumed.items() if k not in user},
                            "" if xl else "not an XL release shape")
    try:
        cfg = STDiTConfig.from_original(user, **fields)
    except ValueError as e:
        raise ConversionError(
            f"{source}: invalid STDiT configuration ({e}); fix it with the config argument"
        ) from None
    deliver_notes(pending, notes)
    return cfg


def convert_stdit(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[STDiT, dict]:
    """Open-Sora 1.0 ``STDiT`` flat state dict → ``(model, numpy params)``."""
    state = fuse_split_qkv(state)
    notes: list[Warning] = []
    cfg = stdit_config(state, config, source, notes)
    model = STDiT(cfg)
    shapes = param_shapes(model, model.init_inputs())
    gt, gh, gw = cfg.grid
    buffers = {"pos_embed": (1, gh * gw, cfg.hidden_size), "pos_embed_temporal": (1, gt, cfg.hidden_size)}
    params = _to_params(state, shapes, buffers, _IGNORABLE_STDIT, source, "arch stdit")
    emit_notes(notes)
    return model, params


# ------------------------------------------------------------------------------------------------
# Open-Sora 1.2 STDiT3
# ------------------------------------------------------------------------------------------------


def stdit3_config(state: StateDict, config: dict | None, source: str = "checkpoint",
                  notes: list[Warning] | None = None) -> STDiT3Config:
    """Resolve the STDiT3 configuration: XL defaults < shapes < ``config`` (``STDiT3Config`` names).
    ``num_heads`` comes from the per-head q-norm or ``rope.freqs``; for a non-XL width the positional
    ``input_sq_size`` (and a head count no tensor reveals) is assumed with a ``UserWarning`` (or a
    note in ``notes``)."""
    fields = dataclasses.asdict(STDiT3Config())
    inferred = _infer_common(state, "spatial_blocks.0")
    depth = count_blocks(state, "spatial_blocks")
    if depth:
        inferred["depth"] = depth
    qn = state.get("spatial_blocks.0.attn.q_norm.weight")
    inferred["qk_norm"] = qn is not None
    hidden = inferred.get("hidden_size", fields["hidden_size"])
    head_dim = None
    if qn is not None and qn.ndim == 1:
        head_dim = int(qn.shape[0])
    elif (rf := state.get("rope.freqs")) is not None and rf.ndim == 1:
        head_dim = 2 * int(rf.shape[0])
    if head_dim and hidden % head_dim == 0:
        inferred["num_heads"] = hidden // head_dim
    fields.update(inferred)
    user = dict(config or {})
    assumed: dict[str, Any] = {}
    if hidden != XL_HIDDEN:  # the XL width fixes 16 heads and the release's input_sq_size 512
        if "num_heads" not in inferred:
            fields["num_heads"] = assumed["num_heads"] = guess_num_heads(hidden)
        assumed["input_sq_size"] = fields["input_sq_size"]
    pending = assumed_note(source, {k: v for k, v in assumed.items() if k not in user}, "not an XL release shape")
    try:
        cfg = STDiT3Config.from_original(user, **fields)
    except NotImplementedError as e:
        raise ConversionError(f"{source}: {e}") from None
    except ValueError as e:
        raise ConversionError(
            f"{source}: invalid STDiT3 configuration ({e}); fix it with the config argument"
        ) from None
    deliver_notes(pending, notes)
    return cfg


def convert_stdit3(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[STDiT3, dict]:
    """Open-Sora 1.2 ``STDiT3`` state dict (HF safetensors layout) → ``(model, numpy params)``."""
    state = fuse_split_qkv(state)
    notes: list[Warning] = []
    cfg = stdit3_config(state, config, source, notes)
    model = STDiT3(cfg)
    shapes = param_shapes(model, model.init_inputs())
    buffers = {"rope.freqs": (cfg.hidden_size // cfg.num_heads // 2,)}
    params = _to_params(state, shapes, buffers, _IGNORABLE_STDIT3, source, "arch stdit3")
    emit_notes(notes)
    return model, params


__all__ = ["convert_stdit", "convert_stdit3", "fuse_split_qkv", "stdit3_config", "stdit_config"]

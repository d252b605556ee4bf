"""facebookresearch/DiT checkpoints (``DiT-XL-2-256x256.pt`` / ``-512x512.pt``: a flat ``torch.save``
state dict; a ``train.py`` checkpoint is read from its ``ema`` entry by :mod:`conversion.io`) → Flax
``(model, numpy params)``.

Configuration: DiT-XL/2 defaults < what the tensors determine < the caller's ``config`` (the original
``DiT(...)`` constructor names: ``input_size``, ``patch_size``, ``hidden_size``, ``depth``,
``num_heads``, ``mlp_ratio``, ``num_classes``, ``class_dropout_prob``, ``learn_sigma``). The shapes
give the width, patch, channels, depth, MLP ratio, learned sigma, the label-table rows and, from the
stored ``pos_embed`` ``(1, (input_size/patch)², C)``, the input size. What they do not give is assumed
with ONE :class:`~conversion.errors.ConversionWarning` naming the values: the head count of a width
outside DiT's model table (XL/L/B/S), the split of the label table into classes + the null-class row
unless it is ImageNet's 1000 + 1, and the input size when ``pos_embed`` is absent.

``pos_embed`` is accepted, shape-checked and dropped: the model recomputes DiT's fixed sin-cos table
(a stored table that differs from it is warned about).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from conversion.common import (
    assumed_note,
    count_blocks,
    deliver_notes,
    emit_notes,
    expected_state_shapes,
    guess_num_heads,
    param_shapes,
    state_to_params,
    validate_state_dict,
)
from conversion.errors import ConversionError, ConversionWarning
from conversion.io import StateDict
from models.dit import DiT, DiTConfig, dit_pos_embed

# DiT's model table (models.py DiT_models): width -> heads. Only XL/2 weights are released, but every
# train.py model is built from this table.
DIT_NUM_HEADS = {1152: 16, 1024: 16, 768: 12, 384: 6}
IMAGENET_CLASSES = 1000
_RELEASE_INPUT_SIZE = 32  # DiT-XL-2-256x256 (512x512: 64)

# original constructor arguments that do not change the inference math
_IGNORED = {"class_dropout_prob", "learn_sigma"}  # mapped to use_cfg_embedding / pred_sigma below


def _infer(state: StateDict) -> dict[str, Any]:
    """Everything the tensor shapes determine (label rows as ``_rows``; ``num_heads`` never: the fused
    qkv hides the head split)."""
    out: dict[str, Any] = {}
    w = state.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4 and w.shape[2] == w.shape[3]:
        out.update(hidden_size=int(w.shape[0]), in_channels=int(w.shape[1]), patch_size=int(w.shape[2]))
    depth = count_blocks(state, "blocks")
    if depth:
        out["depth"] = depth
    hidden = out.get("hidden_size")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if hidden and fc1 is not None and fc1.ndim == 2:
        out["mlp_ratio"] = fc1.shape[0] / hidden
    lin = state.get("final_layer.linear.weight")
    if lin is not None and lin.ndim == 2 and "patch_size" in out:
        out["pred_sigma"] = lin.shape[0] // out["patch_size"] ** 2 == 2 * out["in_channels"]
    table = state.get("y_embedder.embedding_table.weight")
    if table is not None and table.ndim == 2:
        out["_rows"] = int(table.shape[0])
    pe = state.get("pos_embed")
    if pe is not None and pe.ndim == 3 and "patch_size" in out:
        side = math.isqrt(pe.shape[1])
        if side * side == pe.shape[1]:
            out["input_size"] = side * out["patch_size"]
    return out


def dit_config(state: StateDict, config: dict | None, source: str = "checkpoint",
               notes: list[Warning] | None = None) -> DiTConfig:
    """Resolve the :class:`~models.dit.DiTConfig` (see the module docstring); the assumption warning
    goes to ``notes`` (issued by the caller once the checkpoint validated) or is issued now."""
    user = dict(config or {})
    names = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(user) - names - _IGNORED - DiTConfig.NOOP_KEYS)
    if unknown:
        warnings.warn(f"DiT config keys not understood and ignored: {unknown}", stacklevel=3)
    fields = dataclasses.asdict(DiTConfig())
    inferred = _infer(state)
    rows = inferred.pop("_rows", None)
    fields.update(inferred)
    if "learn_sigma" in user:
        user.setdefault("pred_sigma", bool(user.pop("learn_sigma")))
    if "class_dropout_prob" in user:
        user.setdefault("use_cfg_embedding", float(user.pop("class_dropout_prob")) > 0)
    fields.update({k: v for k, v in user.items() if k in names})

    assumed: dict[str, Any] = {}
    why: list[str] = []
    if "num_heads" not in user:
        hidden = int(fields["hidden_size"])
        fields["num_heads"] = DIT_NUM_HEADS.get(hidden) or guess_num_heads(hidden)
        if hidden not in DIT_NUM_HEADS:
            assumed["num_heads"] = fields["num_heads"]
            why.append(f"width {hidden} is not one of DiT's model table")
    if rows is not None and "num_classes" not in user:
        null_row = bool(fields["use_cfg_embedding"])
        fields["num_classes"] = max(rows - int(null_row), 1)
        if "use_cfg_embedding" not in user and rows != IMAGENET_CLASSES + 1:
            assumed["num_classes"] = fields["num_classes"]
            why.append(f"the last of the {rows} label-table rows taken as the null class")
    elif rows is not None and "use_cfg_embedding" not in user:
        fields["use_cfg_embedding"] = rows == int(fields["num_classes"]) + 1
    if "input_size" not in user and "input_size" not in inferred:
        fields["input_size"] = _RELEASE_INPUT_SIZE
        assumed["input_size"] = fields["input_size"]
        why.append("no pos_embed")
    try:
        cfg = DiTConfig(**fields)
    except TypeError as e:
        raise ConversionError(f"{source}: bad DiT config ({e})") from None
    for k in ("input_size", "patch_size", "hidden_size", "depth", "num_heads", "num_classes", "in_channels"):
        v = getattr(cfg, k)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConversionError(f"{source}: config {k}={v!r}; it must be an integer >= 1")
    if isinstance(cfg.mlp_ratio, bool) or not isinstance(cfg.mlp_ratio, (int, float)) or not cfg.mlp_ratio > 0:
        raise ConversionError(f"{source}: config mlp_ratio={cfg.mlp_ratio!r}; it must be a number > 0")
    if cfg.hidden_size % cfg.num_heads or cfg.hidden_size % 4:
        raise ConversionError(f"{source}: hidden size {cfg.hidden_size} does not split into {cfg.num_heads} heads "
                              "(or 4 sin-cos quarters); pass config={'num_heads': ...}")
    if cfg.input_size % cfg.patch_size:
        raise ConversionError(f"{source}: input_size {cfg.input_size} is not a multiple of patch_size {cfg.patch_size}")
    deliver_notes(assumed_note(source, assumed, "; ".join(why)), notes)
    return cfg


def _pos_embed_note(state: StateDict, cfg: DiTConfig, source: str) -> list[Warning]:
    """A warning when the stored ``pos_embed`` holds values but not DiT's fixed table (a zero-filled
    placeholder is ignored): the original would compute with the stored table, the port recomputes."""
    pe = state.get("pos_embed")
    if pe is None:
        return []
    table = np.asarray(pe[0], np.float64)
    if not np.any(table):
        return []
    diff = float(np.abs(table - dit_pos_embed(cfg.hidden_size, cfg.grid)).max())
    tol = 1e-4 if np.dtype(pe.dtype).itemsize >= 4 else 2e-2
    if diff <= tol:
        return []
    return [ConversionWarning(f"{source}: the stored pos_embed is not DiT's fixed sin-cos table of a {cfg.grid}x"
                              f"{cfg.grid} grid (max difference {diff:.3g}); the port computes with the fixed table")]


def convert(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[DiT, dict]:
    """DiT state dict → ``(model, numpy params)``; ONE :class:`ConversionError` names every missing,
    unexpected and mis-shaped key (``pos_embed`` included when present)."""
    notes: list[Warning] = []
    cfg = dit_config(state, config, source, notes)
    model = DiT(cfg)
    shapes = param_shapes(model, model.init_inputs())
    expected = {k: s for k, (_, s) in expected_state_shapes(shapes).items()}
    if "pos_embed" in state:
        expected["pos_embed"] = (1, cfg.grid**2, cfg.hidden_size)
    hint = f"arch {arch}: {cfg.depth} blocks of width {cfg.hidden_size}, {cfg.num_classes} classes"
    validate_state_dict(state, expected, source=source, hint=hint)
    params = state_to_params(state, shapes, ignorable=("pos_embed",), source=source, hint=hint)
    emit_notes(notes + _pos_embed_note(state, cfg, source))
    return model, params


__all__ = ["DIT_NUM_HEADS", "convert", "dit_config"]

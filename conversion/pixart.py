"""PixArt-α / PixArt-Σ (original ``.pth``) and diffusers ``PixArtTransformer2DModel`` → Flax params.

Configuration is resolved as: release defaults < values inferred from tensor shapes < ``config.json``
of a folder < the caller's ``config`` (original constructor names such as ``lewei_scale`` or
diffusers names are both understood). Anything the shapes contradict is reported by validation.
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
    XL_NUM_HEADS,
    assumed_note,
    count_blocks,
    deliver_notes,
    emit_notes,
    expected_state_shapes,
    guess_num_heads,
    param_shapes,
    sincos_2d_grid,
    sincos_position,
    snap_fraction,
    state_to_params,
    validate_state_dict,
)
from conversion.errors import ConversionError, ConversionWarning
from conversion.io import StateDict
from models.layers import pixart_pos_embed
from models.pixart import PixArt, PixArtConfig

# Original constructor arguments that do not change the inference math (or are inferred from shapes).
_IGNORED_ORIGINAL = {
    "class_dropout_prob",
    "drop_path",
    "window_size",
    "window_block_indexes",
    "use_rel_pos",
    "learn_sigma",
    "kv_compress_config",
    "kv_compress",
    "config",
    "model_max_length_",
    "use_pe",
    "enable_flashattn",
    "enable_flash_attn",
    "enable_layernorm_kernel",
}
_IGNORED_DIFFUSERS = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "dropout",
    "norm_num_groups",
    "attention_bias",
    "activation_fn",
    "num_embeds_ada_norm",
    "upcast_attention",
    "norm_type",
    "norm_elementwise_affine",
    "norm_eps",
    "attention_type",
    "num_vector_embeds",
    "only_cross_attention",
    "double_self_attention",
    "use_linear_projection",
    "ff_inner_dim",
}
_ORIGINAL_RENAMES = {"lewei_scale": "pe_interpolation", "interpolation_scale": "pe_interpolation"}

# Buffers that the original loaders recompute: accepted and dropped.
_IGNORABLE = (r"pos_embed", r"pos_embed\.pos_embed")


def _infer_from_state(state: StateDict) -> dict[str, Any]:
    """Everything the tensor shapes of an original-named state dict determine (not ``num_heads``:
    the fused qkv hides the head split; ``input_size`` / ``pe_interpolation`` come from the stored
    table, :func:`_read_pos_embed`)."""
    out: dict[str, Any] = {}
    w = state.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:
        out.update(hidden_size=int(w.shape[0]), in_channels=int(w.shape[1]), patch_size=int(w.shape[2]))
    depth = count_blocks(state, "blocks")
    if depth:
        out["depth"] = depth
    fc1 = state.get("y_embedder.y_proj.fc1.weight")
    if fc1 is not None and fc1.ndim == 2:
        out["caption_channels"] = int(fc1.shape[1])
    emb = state.get("y_embedder.y_embedding")
    if emb is not None and emb.ndim == 2:
        out["model_max_length"] = int(emb.shape[0])
    hidden = out.get("hidden_size")
    mlp = state.get("blocks.0.mlp.fc1.weight")
    if hidden and mlp is not None and mlp.ndim == 2:
        out["mlp_ratio"] = mlp.shape[0] / hidden
    lin = state.get("final_layer.linear.weight")
    if lin is not None and lin.ndim == 2 and "patch_size" in out:
        out_ch = lin.shape[0] // out["patch_size"] ** 2
        out["pred_sigma"] = out_ch == 2 * out.get("in_channels", 4)
    out["micro_condition"] = "csize_embedder.mlp.0.weight" in state
    out["qk_norm"] = "blocks.0.attn.q_norm.weight" in state
    return out


def _read_pos_embed(state: StateDict, hidden: int, patch: int) -> dict[str, Any]:
    """``input_size`` (and, when the table holds the sin-cos values the original computes, the
    ``pe_interpolation`` / ``lewei_scale`` it was built with) from the stored ``pos_embed`` buffer
    ``(1, (input_size / patch)^2, hidden)``: at construction the grid equals the base size, so row 1
    (column 1) sits at position ``1 / pe_interpolation``. The whole table is checked against the one
    recomputed with the value read."""
    pe = state.get("pos_embed")
    if pe is None or pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != hidden:
        return {}
    side = math.isqrt(pe.shape[1])
    if side < 1 or side * side != pe.shape[1]:
        return {}
    out: dict[str, Any] = {"input_size": side * patch}
    table = pe[0]
    if side < 2 or hidden % 4 or sincos_2d_grid(table) != (side, side):
        return out  # e.g. a zero-filled placeholder: only the shape is evidence
    quarter = hidden // 4
    p = sincos_position(table, 1, quarter - 1, 10000.0 ** (-(quarter - 1) / quarter))
    if p is None:
        return out
    scale = snap_fraction(1.0 / p, pe.dtype)
    tol = 1e-4 if np.dtype(pe.dtype).itemsize >= 4 else 2e-2
    if np.abs(np.asarray(table, np.float64) - pixart_pos_embed(hidden, side, side, side, scale)).max() <= tol:
        out["pe_interpolation"] = scale
    return out


def _check_unsupported(state: StateDict, source: str) -> None:
    sr = sorted(k for k in state if re.fullmatch(r"blocks\.\d+\.attn\.(sr|norm)\.(weight|bias)", k))
    if sr:
        raise ConversionError(
            f"{source}: PixArt-Σ KV-token compression (attn.sr / attn.norm) is not supported by this port; "
            f"found {len(sr)} such keys, e.g. {sr[0]}"
        )


# Released PixArt models: latent input_size -> pe_interpolation (α: lewei_scale 1 for 256/512, 2 for
# 1024-MS; Σ: image_size / 512 for 256 / 512 / 1024-MS / 2K).
_RELEASE_PE = {"pixart-alpha": {32: 1.0, 64: 1.0, 128: 2.0}, "pixart-sigma": {32: 0.5, 64: 1.0, 128: 2.0, 256: 4.0}}


def _default_pe_interpolation(family: str, input_size: int) -> float:
    if family == "pixart-sigma":
        return input_size * 8 / 512  # image_size / 512
    return float(max(input_size // 64, 1))  # α: lewei_scale 1 (256/512), 2 (1024)


def _arch_evidence(state: StateDict, family: str, fields: dict[str, Any], source: str) -> list[Warning]:
    """A warning when the checkpoint carries what only the OTHER original family has: α-MS micro-condition
    embedders and α's 120-token null caption vs Σ's 300 tokens and qk-norm. (α-256/512 and small
    models of either family show neither.) The families differ in the null caption used for CFG
    (α: the learned ``y_embedding``, Σ: T5("")) and in the positional scale of their releases."""
    alpha, sigma = [], []
    if fields.get("micro_condition"):
        alpha.append("the csize/ar micro-condition embedders of PixArt-α-MS")
    emb = state.get("y_embedder.y_embedding")
    tokens = int(emb.shape[0]) if emb is not None and emb.ndim == 2 else None
    if tokens == 120:
        alpha.append("PixArt-α's 120-token y_embedding")
    elif tokens == 300:
        sigma.append("PixArt-Σ's 300-token y_embedding")
    if fields.get("qk_norm"):
        sigma.append("q_norm/k_norm (a PixArt-Σ option)")
    other, evidence = ("pixart-alpha", alpha) if family == "pixart-sigma" else ("pixart-sigma", sigma)
    if not evidence:
        return []
    return [ConversionWarning(
        f"{source}: converted as {family}, but it has {' and '.join(evidence)}: it looks like a {other} "
        f"checkpoint (the two use different null captions for guidance); if so, convert it with --arch {other}"
    )]


def _apply_user_config(fields: dict[str, Any], cfg: dict | None, ignored: set[str], renames: dict[str, str]):
    names = {f.name for f in dataclasses.fields(PixArtConfig)}
    unknown = []
    for k, v in (cfg or {}).items():
        k = renames.get(k, k)
        if k in ignored:
            continue
        if k in names:
            fields[k] = tuple(v) if isinstance(v, list) else v
        else:
            unknown.append(k)
    if unknown:
        warnings.warn(f"PixArt config keys not understood and ignored: {sorted(unknown)}", stacklevel=3)


def original_config(state: StateDict, family: str, config: dict | None, source: str = "checkpoint",
                    notes: list[Warning] | None = None) -> PixArtConfig:
    """Release preset < shapes and the stored ``pos_embed`` < ``config``. What none of them
    determines (``num_heads`` of a non-XL width; ``input_size`` / ``pe_interpolation`` without a
    readable table, unless one release fits) is assumed with a ``UserWarning`` naming it, as is
    evidence of the other PixArt family; ``notes``: collect those warnings there instead."""
    pending: list[Warning] = []
    preset = PixArtConfig(family=family) if family == "pixart-alpha" else PixArtConfig(
        family=family, micro_condition=False, model_max_length=300, null_caption="empty-prompt"
    )
    fields = dataclasses.asdict(preset)
    fields.update(_infer_from_state(state))
    table = _read_pos_embed(state, fields["hidden_size"], fields["patch_size"])
    fields.update(table)
    user = {_ORIGINAL_RENAMES.get(k, k): v for k, v in (config or {}).items()}
    xl = fields["hidden_size"] == XL_HIDDEN
    assumed: dict[str, Any] = {}
    fields["num_heads"] = XL_NUM_HEADS if xl else guess_num_heads(fields["hidden_size"])
    if not xl:
        assumed["num_heads"] = fields["num_heads"]
    if "input_size" not in table and not (xl and family == "pixart-alpha" and fields["micro_condition"]):
        assumed["input_size"] = fields["input_size"]  # α-1024-MS is the only release with micro-conditions
    size = user.get("input_size", fields["input_size"])
    size = size[0] if isinstance(size, (list, tuple)) and size else size
    input_size = size if isinstance(size, int) and size > 0 else fields["input_size"]
    if "pe_interpolation" in table:
        given = user.get("pe_interpolation")
        if isinstance(given, (int, float)) and not math.isclose(given, table["pe_interpolation"], rel_tol=1e-3):
            pending.append(ConversionWarning(
                f"{source}: config pe_interpolation/lewei_scale={given} but the stored pos_embed was built with "
                f"{table['pe_interpolation']:g}; using the config value"
            ))
    else:
        fields["pe_interpolation"] = _default_pe_interpolation(family, input_size)
        release = xl and ("input_size" in user or "input_size" not in assumed)
        if not (release and input_size in _RELEASE_PE[family]):
            assumed["pe_interpolation"] = fields["pe_interpolation"]
    if "learn_sigma" in user and "pred_sigma" not in user:
        user["pred_sigma"] = user["learn_sigma"]
    pending += _arch_evidence(state, family, fields, source)
    pending += assumed_note(source, {k: v for k, v in assumed.items() if k not in user},
                            "" if xl else "not an XL release shape")
    _apply_user_config(fields, user, _IGNORED_ORIGINAL, _ORIGINAL_RENAMES)
    cfg = _finish(fields)
    deliver_notes(pending, notes)
    return cfg


def _finish(fields: dict[str, Any]) -> PixArtConfig:
    if isinstance(fields.get("input_size"), (tuple, list)):
        fields["input_size"] = int(fields["input_size"][0])
    if isinstance(fields.get("patch_size"), (tuple, list)):
        fields["patch_size"] = int(fields["patch_size"][-1])
    if fields["hidden_size"] % fields["num_heads"]:
        raise ConversionError(
            f"hidden size {fields['hidden_size']} is not divisible by num_heads {fields['num_heads']}; pass config={{'num_heads': ...}}"
        )
    return PixArtConfig(**fields)


def convert_original(state: StateDict, family: str, config: dict | None, source: str) -> tuple[PixArt, dict]:
    """Original PixArt (``PixArt``/``PixArtMS``) state dict → ``(model, numpy params)``."""
    _check_unsupported(state, source)
    notes: list[Warning] = []
    cfg = original_config(state, family, config, source, notes)
    model = PixArt(cfg)
    shapes = param_shapes(model, model.init_inputs())
    params = state_to_params(state, shapes, ignorable=_IGNORABLE, source=source, hint=f"arch {family}")
    emit_notes(notes)
    return model, params


# ------------------------------------------------------------------------------------------------
# diffusers PixArtTransformer2DModel
# ------------------------------------------------------------------------------------------------

_DIFFUSERS_RULES: list[tuple[str, list[str]]] = [
    (r"x_embedder\.proj\.(.*)", [r"pos_embed.proj.\1"]),
    (r"y_embedder\.y_proj\.fc1\.(.*)", [r"caption_projection.linear_1.\1"]),
    (r"y_embedder\.y_proj\.fc2\.(.*)", [r"caption_projection.linear_2.\1"]),
    (r"t_embedder\.mlp\.0\.(.*)", [r"adaln_single.emb.timestep_embedder.linear_1.\1"]),
    (r"t_embedder\.mlp\.2\.(.*)", [r"adaln_single.emb.timestep_embedder.linear_2.\1"]),
    (r"csize_embedder\.mlp\.0\.(.*)", [r"adaln_single.emb.resolution_embedder.linear_1.\1"]),
    (r"csize_embedder\.mlp\.2\.(.*)", [r"adaln_single.emb.resolution_embedder.linear_2.\1"]),
    (r"ar_embedder\.mlp\.0\.(.*)", [r"adaln_single.emb.aspect_ratio_embedder.linear_1.\1"]),
    (r"ar_embedder\.mlp\.2\.(.*)", [r"adaln_single.emb.aspect_ratio_embedder.linear_2.\1"]),
    (r"t_block\.1\.(.*)", [r"adaln_single.linear.\1"]),
    (r"blocks\.(\d+)\.scale_shift_table", [r"transformer_blocks.\1.scale_shift_table"]),
    (
        r"blocks\.(\d+)\.attn\.qkv\.(.*)",
        [r"transformer_blocks.\1.attn1.to_q.\2", r"transformer_blocks.\1.attn1.to_k.\2", r"transformer_blocks.\1.attn1.to_v.\2"],
    ),
    (r"blocks\.(\d+)\.attn\.proj\.(.*)", [r"transformer_blocks.\1.attn1.to_out.0.\2"]),
    (r"blocks\.(\d+)\.cross_attn\.q_linear\.(.*)", [r"transformer_blocks.\1.attn2.to_q.\2"]),
    (
        r"blocks\.(\d+)\.cross_attn\.kv_linear\.(.*)",
        [r"transformer_blocks.\1.attn2.to_k.\2", r"transformer_blocks.\1.attn2.to_v.\2"],
    ),
    (r"blocks\.(\d+)\.cross_attn\.proj\.(.*)", [r"transformer_blocks.\1.attn2.to_out.0.\2"]),
    (r"blocks\.(\d+)\.mlp\.fc1\.(.*)", [r"transformer_blocks.\1.ff.net.0.proj.\2"]),
    (r"blocks\.(\d+)\.mlp\.fc2\.(.*)", [r"transformer_blocks.\1.ff.net.2.\2"]),
    (r"final_layer\.linear\.(.*)", [r"proj_out.\1"]),
    (r"final_layer\.scale_shift_table", [r"scale_shift_table"]),
]


def diffusers_parts(original_key: str) -> list[str] | None:
    """diffusers keys whose row-wise concatenation is the original tensor (None: not stored)."""
    for pattern, targets in _DIFFUSERS_RULES:
        m = re.fullmatch(pattern, original_key)
        if m:
            return [m.expand(t) for t in targets]
    return None


def _diffusers_fields(state: StateDict, config: dict | None, source: str, notes: list[Warning]) -> dict[str, Any]:
    """Defaults < shapes < ``config.json`` / the caller's config (diffusers names). A folder without
    ``config.json`` leaves the head count, ``sample_size`` and ``interpolation_scale`` to assumption
    (a warning in ``notes``) unless the shapes are those of an XL release that fixes them."""
    cfg = dict(config or {})
    given = set(cfg)
    fields = dataclasses.asdict(PixArtConfig(family="pixart-diffusers", null_caption="empty-prompt"))
    w = state.get("pos_embed.proj.weight")
    if w is not None and w.ndim == 4:
        fields.update(hidden_size=int(w.shape[0]), in_channels=int(w.shape[1]), patch_size=int(w.shape[2]))
    depth = count_blocks(state, "transformer_blocks")
    if depth:
        fields["depth"] = depth
    fc1 = state.get("caption_projection.linear_1.weight")
    if fc1 is not None and fc1.ndim == 2:
        fields["caption_channels"] = int(fc1.shape[1])
    ff = state.get("transformer_blocks.0.ff.net.0.proj.weight")
    if ff is not None and ff.ndim == 2:
        fields["mlp_ratio"] = ff.shape[0] / fields["hidden_size"]
    proj = state.get("proj_out.weight")
    if proj is not None and proj.ndim == 2:
        fields["pred_sigma"] = proj.shape[0] // fields["patch_size"] ** 2 == 2 * fields["in_channels"]
    fields["micro_condition"] = "adaln_single.emb.resolution_embedder.linear_1.weight" in state
    xl = fields["hidden_size"] == XL_HIDDEN
    fields["num_heads"] = XL_NUM_HEADS if xl else guess_num_heads(fields["hidden_size"])
    # config.json / caller config in diffusers naming
    if "num_attention_heads" in cfg:
        fields["num_heads"] = cfg.pop("num_attention_heads")
        head_dim = cfg.pop("attention_head_dim", None)
        if head_dim is not None:
            fields["hidden_size"] = fields["num_heads"] * head_dim
    else:
        cfg.pop("attention_head_dim", None)
    if "num_layers" in cfg:
        fields["depth"] = cfg.pop("num_layers")
    if "sample_size" in cfg:
        fields["input_size"] = cfg.pop("sample_size")
    out_channels = cfg.pop("out_channels", None)
    if out_channels is not None:
        fields["pred_sigma"] = out_channels == 2 * cfg.get("in_channels", fields["in_channels"])
    interp = cfg.pop("interpolation_scale", None)
    # diffusers' own default without interpolation_scale: max(sample_size // 64, 1)
    fields["pe_interpolation"] = float(interp) if interp is not None else float(max(fields["input_size"] // 64, 1))
    uac = cfg.pop("use_additional_conditions", None)
    if uac is not None:
        fields["micro_condition"] = bool(uac)
    cross = cfg.pop("cross_attention_dim", None)
    if cross is not None and cross != fields["hidden_size"]:
        raise ConversionError(f"cross_attention_dim {cross} must equal the hidden size {fields['hidden_size']}")
    if cfg.get("norm_eps", 1e-6) != 1e-6:
        raise ConversionError(f"norm_eps {cfg['norm_eps']} is not supported (PixArt uses 1e-6)")
    fields["model_max_length"] = 120 if fields["micro_condition"] else 300
    assumed: dict[str, Any] = {}
    if not xl and not given & {"num_attention_heads", "num_heads"}:
        assumed["num_attention_heads"] = fields["num_heads"]
    # only PixArt-α-1024-MS has micro-conditions; the other XL releases differ in size alone
    if not given & {"sample_size", "input_size"} and not (xl and fields["micro_condition"]):
        assumed["sample_size"] = fields["input_size"]
        if not given & {"interpolation_scale", "pe_interpolation"}:
            assumed["interpolation_scale"] = fields["pe_interpolation"]
    notes += assumed_note(source, assumed, "no config.json" if config is None else "")
    _apply_user_config(fields, cfg, _IGNORED_DIFFUSERS | _IGNORED_ORIGINAL, {})
    return fields


def convert_diffusers(state: StateDict, config: dict | None, source: str) -> tuple[PixArt, dict]:
    """diffusers ``PixArtTransformer2DModel`` weights → ``(model, numpy params)``.

    Validation is done in diffusers key space (every missing/unexpected/mis-shaped diffusers key is
    named). diffusers stores no learned null caption; ``y_embedder/y_embedding`` is zero-filled and
    the config says ``null_caption="empty-prompt"`` (diffusers pipelines encode "" with T5).
    """
    notes: list[Warning] = []
    cfg = _finish(_diffusers_fields(state, config, source, notes))
    model = PixArt(cfg)
    shapes = param_shapes(model, model.init_inputs())
    table = expected_state_shapes(shapes)
    expected: dict[str, tuple[int, ...]] = {}
    parts_of: dict[str, list[str]] = {}
    for okey, (_, shape) in table.items():
        parts = diffusers_parts(okey)
        if parts is None:
            continue
        parts_of[okey] = parts
        for p in parts:
            expected[p] = (shape[0] // len(parts), *shape[1:])
    validate_state_dict(state, expected, ignorable=_IGNORABLE, source=source, hint="arch pixart-diffusers")
    original = {ok: np.concatenate([state[p] for p in parts], 0) if len(parts) > 1 else state[parts[0]] for ok, parts in parts_of.items()}
    params = state_to_params(
        original,
        shapes,
        source=source,
        fill={"y_embedder.y_embedding": lambda s: np.zeros(s, np.float32)},
    )
    emit_notes(notes)
    return model, params


def convert(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[PixArt, dict]:
    """The converter of the ``pixart`` family (``conversion.CONVERTERS``): original PixArt-α/Σ ``.pth``
    state dicts, or a diffusers ``PixArtTransformer2DModel`` for ``arch="pixart-diffusers"``."""
    if arch == "pixart-diffusers":
        return convert_diffusers(state, config, source)
    return convert_original(state, arch, config, source)

"""PixArt-α / PixArt-Σ (original ``.pth``) and diffusers ``PixArtTransformer2DModel`` → Flax params.

Configuration is resolved as: release defaults < values inferred from tensor shapes < ``config.json``
of a folder < the caller's ``config`` (original constructor names such as ``lewei_scale`` or
diffusers names are both understood). Anything the shapes contradict is reported by validation.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

import numpy as np

from conversion.common import count_blocks, expected_state_shapes, param_shapes, state_to_params, validate_state_dict
from conversion.errors import ConversionError
from conversion.io import StateDict
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
    """Everything the tensor shapes of an original-named state dict determine."""
    out: dict[str, Any] = {}
    w = state.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:
        out.update(hidden_size=w.shape[0], in_channels=w.shape[1], patch_size=w.shape[2])
    depth = count_blocks(state, "blocks")
    if depth:
        out["depth"] = depth
    if "y_embedder.y_proj.fc1.weight" in state:
        out["caption_channels"] = state["y_embedder.y_proj.fc1.weight"].shape[1]
    if "y_embedder.y_embedding" in state:
        out["model_max_length"] = state["y_embedder.y_embedding"].shape[0]
    hidden = out.get("hidden_size")
    if hidden and "blocks.0.mlp.fc1.weight" in state:
        out["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    lin = state.get("final_layer.linear.weight")
    if lin is not None and "patch_size" in out:
        out_ch = lin.shape[0] // out["patch_size"] ** 2
        out["pred_sigma"] = out_ch == 2 * out.get("in_channels", 4)
    out["micro_condition"] = "csize_embedder.mlp.0.weight" in state
    out["qk_norm"] = "blocks.0.attn.q_norm.weight" in state
    pe = state.get("pos_embed")
    if pe is not None and pe.ndim == 3 and "patch_size" in out:
        side = int(round(pe.shape[1] ** 0.5))
        if side * side == pe.shape[1]:
            out["input_size"] = side * out["patch_size"]
    if hidden and hidden % 72 == 0:
        out["num_heads"] = hidden // 72  # the released XL models use head_dim 72
    return out


def _check_unsupported(state: StateDict, source: str) -> None:
    sr = sorted(k for k in state if re.fullmatch(r"blocks\.\d+\.attn\.(sr|norm)\.(weight|bias)", k))
    if sr:
        raise ConversionError(
            f"{source}: PixArt-Σ KV-token compression (attn.sr / attn.norm) is not supported by this port; "
            f"found {len(sr)} such keys, e.g. {sr[0]}"
        )


def _default_pe_interpolation(family: str, input_size: int) -> float:
    if family == "pixart-sigma":
        return input_size * 8 / 512  # image_size / 512
    return float(max(input_size // 64, 1))  # α: lewei_scale 1 (256/512), 2 (1024)


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


def original_config(state: StateDict, family: str, config: dict | None) -> PixArtConfig:
    preset = PixArtConfig(family=family) if family == "pixart-alpha" else PixArtConfig(
        family=family, micro_condition=False, model_max_length=300, null_caption="empty-prompt"
    )
    fields = dataclasses.asdict(preset)
    fields.update(_infer_from_state(state))
    if family == "pixart-sigma":
        fields["null_caption"] = "empty-prompt"
    user = dict(config or {})
    if "pe_interpolation" not in user and "lewei_scale" not in user:
        user_input = user.get("input_size", fields["input_size"])
        fields["pe_interpolation"] = _default_pe_interpolation(family, int(user_input))
    if "learn_sigma" in user and "pred_sigma" not in user:
        user["pred_sigma"] = user["learn_sigma"]
    _apply_user_config(fields, user, _IGNORED_ORIGINAL, _ORIGINAL_RENAMES)
    return _finish(fields)


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
    cfg = original_config(state, family, config)
    model = PixArt(cfg)
    shapes = param_shapes(model, model.init_inputs())
    params = state_to_params(state, shapes, ignorable=_IGNORABLE, source=source, hint=f"arch {family}")
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


def _diffusers_fields(state: StateDict, config: dict | None) -> dict[str, Any]:
    cfg = dict(config or {})
    fields = dataclasses.asdict(PixArtConfig(family="pixart-diffusers", null_caption="empty-prompt"))
    w = state.get("pos_embed.proj.weight")
    if w is not None and w.ndim == 4:
        fields.update(hidden_size=w.shape[0], in_channels=w.shape[1], patch_size=w.shape[2])
    depth = count_blocks(state, "transformer_blocks")
    if depth:
        fields["depth"] = depth
    if "caption_projection.linear_1.weight" in state:
        fields["caption_channels"] = state["caption_projection.linear_1.weight"].shape[1]
    if "transformer_blocks.0.ff.net.0.proj.weight" in state:
        fields["mlp_ratio"] = state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / fields["hidden_size"]
    fields["micro_condition"] = "adaln_single.emb.resolution_embedder.linear_1.weight" in state
    if fields["hidden_size"] % 72 == 0:
        fields["num_heads"] = fields["hidden_size"] // 72
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
    fields["pe_interpolation"] = float(interp) if interp is not None else float(max(fields["input_size"] // 64, 1))
    uac = cfg.pop("use_additional_conditions", None)
    if uac is not None:
        fields["micro_condition"] = bool(uac)
    elif config is not None and "sample_size" in (config or {}):
        fields["micro_condition"] = fields["input_size"] == 128
    cross = cfg.pop("cross_attention_dim", None)
    if cross is not None and cross != fields["hidden_size"]:
        raise ConversionError(f"cross_attention_dim {cross} must equal the hidden size {fields['hidden_size']}")
    if cfg.get("norm_eps", 1e-6) != 1e-6:
        raise ConversionError(f"norm_eps {cfg['norm_eps']} is not supported (PixArt uses 1e-6)")
    fields["model_max_length"] = 120 if fields["micro_condition"] else 300
    _apply_user_config(fields, cfg, _IGNORED_DIFFUSERS | _IGNORED_ORIGINAL, {})
    return fields


def convert_diffusers(state: StateDict, config: dict | None, source: str) -> tuple[PixArt, dict]:
    """diffusers ``PixArtTransformer2DModel`` weights → ``(model, numpy params)``.

    Validation is done in diffusers key space (every missing/unexpected/mis-shaped diffusers key is
    named). diffusers stores no learned null caption; ``y_embedder/y_embedding`` is zero-filled and
    the config says ``null_caption="empty-prompt"`` (diffusers pipelines encode "" with T5).
    """
    cfg = _finish(_diffusers_fields(state, config))
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
    return model, params


def convert(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[PixArt, dict]:
    """The converter of the ``pixart`` family (``conversion.CONVERTERS``): original PixArt-α/Σ ``.pth``
    state dicts, or a diffusers ``PixArtTransformer2DModel`` for ``arch="pixart-diffusers"``."""
    if arch == "pixart-diffusers":
        return convert_diffusers(state, config, source)
    return convert_original(state, arch, config, source)

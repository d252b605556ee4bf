"""Autoencoders → Flax params: the diffusers ``AutoencoderKL`` (``sd-vae``: SD / SDXL VAE ``vae/`` folders) and
Open-Sora 1.2's ``VideoAutoencoderPipeline`` (``opensora-vae-v1.2``: ``model.safetensors`` + ``config.json``).

Configuration: defaults < tensor shapes < ``config.json`` < the caller's ``config`` (diffusers / original
argument names). What the shapes cannot tell is assumed with one :class:`ConversionWarning` naming it: the
GroupNorm group count, and, for a VAE folder without ``config.json``, the ``scaling_factor`` and
``sample_size`` (the SD and the SDXL VAE have the same keys and shapes). Hub files from before diffusers'
attention refactor name the mid-block attention ``query/key/value/proj_attn``; both namings are accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

from conversion.common import assumed_note, count_blocks, deliver_notes, emit_notes, param_shapes, state_to_params
from conversion.errors import ConversionError, ConversionWarning
from conversion.io import StateDict
from models.opensora_vae import SDXL_VAE, OpenSoraVAE, OpenSoraVAEConfig, VAETemporalConfig
from models.vae import AutoencoderKL, AutoencoderKLConfig

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
_RELEASE_GROUPS = 32  # every released SD / SDXL VAE and VAE_Temporal_SD


def rename_legacy_attention(state: StateDict, prefix: str = "") -> StateDict:
    """Map the legacy mid-block attention names (``query``, ``key``, ``value``, ``proj_attn``) to diffusers'
    current ones (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) under ``prefix``; other keys unchanged."""
    pat = re.compile(rf"({re.escape(prefix)}(?:encoder|decoder)\.mid_block\.attentions\.\d+)\."
                     rf"({'|'.join(_LEGACY_ATTENTION)})\.(weight|bias)")
    out = {}
    for k, v in state.items():
        m = pat.fullmatch(k)
        out[f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}" if m else k] = v
    return out


def _check_original(cfg: dict, source: str) -> None:
    """The diffusers arguments this structure cannot honour: one-line errors naming the value."""
    for key, want in _BLOCK_TYPES.items():
        got = cfg.get(key)
        if got is not None and any(t != want for t in got):
            raise ConversionError(f"{source}: {key} {list(got)} is not supported; this port has {want} blocks only")
    act = cfg.get("act_fn")
    if act is not None and act != "silu":
        raise ConversionError(f"{source}: act_fn {act!r} is not supported; the SD VAE structure uses 'silu'")


def _shape_fields(state: StateDict, prefix: str = "") -> dict[str, Any]:
    """What the tensor shapes of a diffusers ``AutoencoderKL`` state dict determine (under ``prefix``)."""
    out: dict[str, Any] = {}

    def get(k: str):
        v = state.get(prefix + k)
        return v if v is not None and getattr(v, "ndim", 0) >= 1 else None

    n = count_blocks(state, f"{prefix}encoder.down_blocks")
    chans = [get(f"encoder.down_blocks.{i}.resnets.0.conv1.weight") for i in range(n)]
    if n and all(c is not None for c in chans):
        out["block_out_channels"] = tuple(int(c.shape[0]) for c in chans)
    layers = count_blocks(state, f"{prefix}encoder.down_blocks.0.resnets")
    if layers:
        out["layers_per_block"] = layers
    for key, field, axis in (("encoder.conv_in.weight", "in_channels", 1), ("decoder.conv_out.weight", "out_channels", 0),
                             ("decoder.conv_in.weight", "latent_channels", 1)):
        w = get(key)
        if w is not None and w.ndim == 4:
            out[field] = int(w.shape[axis])
    out["use_quant_conv"] = prefix + "quant_conv.weight" in state
    out["use_post_quant_conv"] = prefix + "post_quant_conv.weight" in state
    out["mid_block_add_attention"] = any(k.startswith(f"{prefix}decoder.mid_block.attentions.") for k in state)
    return out


def _groups_for(channels: tuple[int, ...]) -> int:
    """The release's 32 groups where the channels allow it, else the most groups (<= 32) dividing them all."""
    return max(g for g in range(1, _RELEASE_GROUPS + 1) if all(c % g == 0 for c in channels))


def autoencoder_config(state: StateDict, config: dict | None, source: str = "checkpoint", *, prefix: str = "",
                       base: AutoencoderKLConfig | None = None, notes: list[Warning] | None = None,
                       what: str = "") -> AutoencoderKLConfig:
    """``AutoencoderKLConfig`` of a diffusers VAE state dict: ``base`` (default: the SD VAE) < shapes < ``config``
    (diffusers names). Values neither determines are assumed with a warning (into ``notes`` if given)."""
    cfg = dict(config or {})
    _check_original(cfg, source)
    fields = dataclasses.asdict(base or AutoencoderKLConfig())
    fields.update(_shape_fields(state, prefix))
    known = set(fields)
    unknown = sorted(k for k in cfg if k not in known and k not in AutoencoderKLConfig.NOOP_KEYS and k[:1] != "_")
    if unknown:  # e.g. options of a newer diffusers release
        deliver_notes([ConversionWarning(f"{source}: {what or 'AutoencoderKL'} config keys not understood and "
                                         f"ignored: {', '.join(unknown)}")], notes)
    given = {k: v for k, v in cfg.items() if k in known}
    assumed: dict[str, Any] = {}
    if "norm_num_groups" not in given:
        fields["norm_num_groups"] = _groups_for(tuple(given.get("block_out_channels", fields["block_out_channels"])))
        if fields["block_out_channels"] != AutoencoderKLConfig().block_out_channels:
            assumed["norm_num_groups"] = fields["norm_num_groups"]
    if config is None and base is None:
        assumed.update(scaling_factor=fields["scaling_factor"], sample_size=fields["sample_size"])
    fields.update(given)
    deliver_notes(assumed_note(source, assumed, f"{what} has no config.json" if config is None else what), notes)
    try:
        return AutoencoderKLConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None


@functools.lru_cache(maxsize=16)
def _param_shapes(module: type, config: Any) -> dict:
    """The params shapes of ``module(config)`` (abstract; cached: full-size VAEs take seconds to trace)."""
    model = module(config)
    return param_shapes(model, model.init_inputs())


def convert_sd_vae(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[AutoencoderKL, dict]:
    """The converter of the ``sd-vae`` component (``conversion.CONVERTERS``): a diffusers ``AutoencoderKL``
    state dict (current or legacy attention names) → ``(AutoencoderKL, numpy params)``."""
    notes: list[Warning] = []
    state = rename_legacy_attention(state)
    cfg = autoencoder_config(state, config, source, notes=notes)
    model = AutoencoderKL(cfg)
    params = state_to_params(state, _param_shapes(AutoencoderKL, cfg), source=source, hint=f"arch {arch}")
    emit_notes(notes)
    return model, params


# ------------------------------------------------------------------------------- Open-Sora 1.2 video VAE

_SPATIAL = "spatial_vae.module."
_TEMPORAL = "temporal_vae."
_TEMPORAL_TYPES = ("VAE_Temporal", "VAE_Temporal_SD")


def _temporal_shape_fields(state: StateDict) -> dict[str, Any]:
    """``VAE_Temporal`` arguments the shapes determine."""
    out: dict[str, Any] = {}
    w = state.get(_TEMPORAL + "encoder.conv_in.conv.weight")
    if w is not None and w.ndim == 5:
        out.update(filters=int(w.shape[0]), in_out_channels=int(w.shape[1]))
    blocks = count_blocks(state, _TEMPORAL + "encoder.block_res_blocks")
    stack = [state.get(f"{_TEMPORAL}encoder.block_res_blocks.{i}.0.conv1.conv.weight") for i in range(blocks)]
    if blocks and "filters" in out and all(s is not None and s.ndim == 5 and s.shape[0] % out["filters"] == 0
                                           for s in stack):
        out["channel_multipliers"] = tuple(int(s.shape[0]) // out["filters"] for s in stack)
        out["temporal_downsample"] = tuple(f"{_TEMPORAL}encoder.conv_blocks.{i}.conv.weight" in state
                                           for i in range(blocks - 1))
    res = count_blocks(state, _TEMPORAL + "encoder.block_res_blocks.0")
    if res:
        out["num_res_blocks"] = res
    w = state.get(_TEMPORAL + "post_quant_conv.conv.weight")  # (latent_embed_dim, embed_dim, 1, 1, 1)
    if w is not None and w.ndim == 5:
        out.update(latent_embed_dim=int(w.shape[0]), embed_dim=int(w.shape[1]))
    return out


def _spatial_folder_config(vae_2d: dict, source: str) -> dict | None:
    """``config.json`` of the folder ``vae_2d.from_pretrained`` (+ ``subfolder``) names, looked up next to the
    checkpoint and one level up (a local copy of the hub repo, as the release's loader would read); None if
    absent."""
    name = vae_2d.get("from_pretrained")
    if not isinstance(name, str) or not name:
        return None
    here = Path(source).parent
    for root in (here, here.parent, Path.cwd()):
        folder = root / name / (vae_2d.get("subfolder") or "")
        cfg_file = folder / "config.json"
        if cfg_file.is_file():
            try:
                return json.loads(cfg_file.read_text())
            except (OSError, ValueError) as e:
                raise ConversionError(f"{cfg_file}: not valid JSON ({e})") from None
    return None


def opensora_vae_config(state: StateDict, config: dict | None, source: str = "checkpoint",
                        notes: list[Warning] | None = None) -> OpenSoraVAEConfig:
    """``OpenSoraVAEConfig`` from the pipeline's ``config.json`` / ``VideoAutoencoderPipelineConfig`` arguments
    (``vae_2d``, ``vae_temporal``, ``micro_frame_size``; or this package's own ``spatial_vae`` / ``temporal_vae``
    dicts) and the shapes. The spatial VAE's config comes from ``spatial_vae`` / ``spatial_vae_config`` if
    given, else from the ``config.json`` of the folder ``vae_2d`` names when it is found, else from the
    shapes with the SDXL VAE's values."""
    pending: list[Warning] = []
    cfg = dict(config or {})  # other keys: PretrainedConfig's bookkeeping (transformers writes dozens)
    vae_2d = dict(cfg.get("vae_2d") or {})
    spatial_cfg = cfg.get("spatial_vae") or cfg.get("spatial_vae_config") or _spatial_folder_config(vae_2d, source)
    spatial = autoencoder_config(state, spatial_cfg, source, prefix=_SPATIAL, base=SDXL_VAE, notes=pending,
                                 what="the spatial VAE (vae_2d)")
    temporal = _temporal_config(state, cfg.get("temporal_vae") or cfg.get("vae_temporal") or {}, source, pending)
    micro_batch = cfg.get("micro_batch_size", vae_2d.get("micro_batch_size", 4))
    try:
        out = OpenSoraVAEConfig(spatial_vae=spatial, temporal_vae=temporal,
                                micro_frame_size=cfg.get("micro_frame_size", 17), micro_batch_size=micro_batch)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None
    deliver_notes(pending, notes)
    return out


def _temporal_config(state: StateDict, given: dict, source: str, notes: list[Warning]) -> VAETemporalConfig:
    given = dict(given)
    kind = given.pop("type", "VAE_Temporal_SD")
    given.pop("from_pretrained", None)
    if kind not in _TEMPORAL_TYPES:
        raise ConversionError(f"{source}: vae_temporal type {kind!r} is not supported; choose one of "
                              f"{', '.join(_TEMPORAL_TYPES)}")
    fields = dataclasses.asdict(VAETemporalConfig())
    fields.update(_temporal_shape_fields(state))
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConversionError(f"{source}: vae_temporal keys not understood: {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(fields))}")
    if "num_groups" not in given:
        widths = tuple(fields["filters"] * m for m in fields["channel_multipliers"])
        fields["num_groups"] = _groups_for(widths)
        if fields["filters"] != VAETemporalConfig().filters:
            notes += assumed_note(source, {"num_groups": fields["num_groups"]}, "vae_temporal")
    fields.update(given)
    try:
        return VAETemporalConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: vae_temporal: {e}") from None


def convert_opensora_vae(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[OpenSoraVAE, dict]:
    """The converter of the ``opensora-vae-v1.2`` component: the pipeline's state dict (spatial VAE under
    ``spatial_vae.module.*``, ``temporal_vae.*``, the ``scale`` / ``shift`` buffers) → ``(OpenSoraVAE, numpy params)``."""
    notes: list[Warning] = []
    state = rename_legacy_attention(state, _SPATIAL)
    cfg = opensora_vae_config(state, config, source, notes)
    model = OpenSoraVAE(cfg)
    params = state_to_params(state, _param_shapes(OpenSoraVAE, cfg), source=source, hint=f"arch {arch}")
    emit_notes(notes)
    return model, params


__all__ = [
    "autoencoder_config",
    "convert_opensora_vae",
    "convert_sd_vae",
    "opensora_vae_config",
    "rename_legacy_attention",
]

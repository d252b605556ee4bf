"""Model families: each one declared ONCE, read by conversion, sampling, calibration, quantization and the CLI.

A :class:`Family` names everything the rest of the project needs to know about one architecture:

* the Flax module and its config dataclass (``models/<family>.py``);
* the checkpoint archs it is converted from (:class:`Arch`: name, checkpoint formats, the original
  ``forward()``'s positional argument names, config values that define the arch);
* the release sampler and its defaults (by name: :mod:`vidq_jax.sampling` owns the samplers);
* the null-caption policy for classifier-free guidance;
* the *layer groups* — ``self_attn``, ``cross_attn``, ``cross_kv``, ``temporal_attn``, ``ffn``, ``adaln``,
  ``embedders``, ``final`` — as regexes over Dense paths (``"blocks_3/mlp/fc1"``), and the pattern of its
  transformer blocks in execution order. Quantization rules address groups as ``group:<name>``; the
  derived groups ``blocks`` (every Dense inside a transformer block) and ``edge_blocks`` (the first and the
  last block) come from these;
* its attentions whose output feeds a Dense (:class:`AttentionOutput`: the V producer and its column block,
  the output projection, the head count's config field) — derived group ``attn_out``, read by the offline
  fold of the output projection's balancing into V (:mod:`vidq_jax.quant.fold`).

Adding a family = one model file, one converter file (``conversion/<family>.py``, registered in
``conversion.CONVERTERS``) and one :class:`Family` entry in :data:`FAMILIES` below (DESIGN.md has the
checklist). Nothing else in the project keys on class names or layer names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from models.dit import DiT, DiTConfig
from models.pixart import PixArt, PixArtConfig
from models.stdit import STDiT, STDiTConfig
from models.stdit3 import STDiT3, STDiT3Config
from models.t5 import T5Config, T5Encoder
from models.opensora_vae import OpenSoraVAE, OpenSoraVAEConfig
from models.vae import AutoencoderKL, AutoencoderKLConfig

# Groups every family may declare (a family leaves out those it does not have, e.g. temporal_attn for images).
GROUPS: tuple[str, ...] = ("self_attn", "cross_attn", "cross_kv", "temporal_attn", "ffn", "adaln", "embedders",
                           "final")
# The groups whose layers live inside the transformer blocks (their union is the derived group "blocks").
BLOCK_GROUPS: tuple[str, ...] = ("self_attn", "cross_attn", "temporal_attn", "ffn")
DERIVED_GROUPS: tuple[str, ...] = ("blocks", "edge_blocks", "attn_out")
_NEVER = r"(?!)"  # a regex that matches nothing


@dataclasses.dataclass(frozen=True)
class Arch:
    """One checkpoint flavour of a family (what ``--arch`` names).

    ``config``: config fields that define this arch (e.g. PixArt-Σ's ``null_caption``); the converter
    starts from them. ``forward_args``: the ORIGINAL class's ``forward()`` positional parameter names
    (fixture cases record calls in that signature)."""

    name: str
    formats: tuple[str, ...]
    forward_args: tuple[str, ...]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    # Methods of the ORIGINAL class other than forward that fixture cases call (``"decode"``, a dotted path
    # such as ``"temporal_vae.encode"``) -> the name of the Flax module method computing the same value that
    # the case's ``returns`` selects (``"encode"`` of a VAE returns ``latent_dist.mean``). ``""`` = forward.
    methods: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AttentionOutput:
    r"""Attentions whose output feeds a Dense (what an offline fold of a rotation into V and the output
    projection needs: :mod:`vidq_jax.quant.fold`).

    ``module``: regex (anchored with ``^``) of the attention modules' paths (``r"^blocks_\d+/attn"``);
    inside each, the Dense ``<module>/<output>`` reads ``concat_h(softmax(Q_h K_hᵀ) V_h)`` (head ``h`` =
    channels ``h·d .. (h+1)·d - 1``, ``d = C / heads``), and V is column block ``value_block`` of the
    ``value_blocks`` equal column blocks of the Dense ``<module>/<value>`` (q, k, v of a fused ``qkv`` =
    blocks 0, 1, 2 of 3; k, v of ``kv_linear`` = 0, 1 of 2). ``heads``: the model config field holding
    the head count."""

    module: str
    value: str
    value_block: int
    value_blocks: int
    output: str = "proj"
    heads: str = "num_heads"

    def output_pattern(self) -> str:
        """Regex of the output Dense paths of these attentions."""
        return f"{self.module}/{re.escape(self.output)}$"


@dataclasses.dataclass(frozen=True)
class SamplerDefaults:
    """The release's sampler (a name of :data:`vidq_jax.sampling.SAMPLERS`) and its settings.

    ``size_keywords(latent_shape, given) -> dict``: keywords of that sampler which depend on the size of
    the sample (e.g. the pixel ``num_frames`` / ``height`` / ``width`` behind a latent, which only the
    family knows: its VAE), for a latent ``(B, ...)``; ``given`` = the keywords the caller passed (the
    result holds only others). :func:`vidq_jax.pipeline.size_keywords` applies it."""

    name: str
    steps: int
    guidance_scale: float
    size_keywords: Callable[[Sequence[int], Mapping[str, Any]], dict[str, Any]] | None = None


class _Declared:
    """What families and components share: their archs by name and building the module from a config
    (subclasses have ``archs``, ``module`` and ``config`` fields)."""

    def arch(self, name: str) -> Arch:
        for a in self.archs:
            if a.name == name:
                return a
        raise KeyError(name)

    def build(self, config: Mapping[str, Any] | Any, **module_kwargs: Any):
        """The module from a config dict (as written by ``config.to_dict()``) or a config object."""
        cfg = config if isinstance(config, self.config) else self.config.from_dict(dict(config))
        return self.module(cfg, **module_kwargs)


@dataclasses.dataclass(frozen=True)
class Family(_Declared):
    name: str
    module: type
    config: type
    archs: tuple[Arch, ...]
    sampler: SamplerDefaults
    groups: Mapping[str, str]
    # regex matching the prefix of a transformer block: group 1 = the stack name, group 2 = the index;
    # execution order = by index, then by stack name (STDiT3 runs spatial block i before temporal block i)
    blocks: str
    # "learned" (params["y_embedder"]["y_embedding"]), "empty-prompt" (T5("")) or "null-class" (class-label
    # models: the label index config.num_classes)
    null_caption: str = "learned"
    video: bool = False
    description: str = ""
    # the attentions whose output projection may absorb a per-head rotation of V (derived group attn_out)
    attention_outputs: tuple[AttentionOutput, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"family {self.name!r}: unknown layer groups {sorted(unknown)}; known: {GROUPS}")
        for g, pat in self.groups.items():
            re.compile(pat)
        re.compile(self.blocks)

    # ------------------------------------------------------------------ layer groups
    def group_pattern(self, group: str, paths: Iterable[str] | None = None) -> str:
        """Regex of ``group`` over this family's Dense paths. ``edge_blocks`` needs the model's ``paths``
        (how many blocks it has); a group the family does not have matches nothing."""
        if group == "blocks":
            pats = [self.groups[g] for g in BLOCK_GROUPS if g in self.groups]
            return "|".join(f"(?:{p})" for p in pats) if pats else _NEVER
        if group == "attn_out":
            pats = [a.output_pattern() for a in self.attention_outputs]
            return "|".join(f"(?:{p})" for p in pats) if pats else _NEVER
        if group == "edge_blocks":
            if paths is None:
                raise ValueError(f"group:edge_blocks of {self.name} needs the model's layer paths")
            return self.edge_blocks(paths)
        if group not in GROUPS:
            raise ValueError(f"unknown layer group {group!r}; known: {', '.join(GROUPS + DERIVED_GROUPS)}")
        return self.groups.get(group, _NEVER)

    def group_table(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        """``{group: regex}`` for every group name (declared, derived; ``edge_blocks`` only with ``paths``)."""
        paths = None if paths is None else list(paths)
        names = GROUPS + (DERIVED_GROUPS if paths is not None else ("blocks", "attn_out"))
        return {g: self.group_pattern(g, paths) for g in names}

    def group_of(self, path: str) -> str | None:
        """The block group (``self_attn``/``cross_attn``/``temporal_attn``/``ffn``) of a Dense path, or None."""
        return next((g for g in BLOCK_GROUPS if g in self.groups and re.search(self.groups[g], path)), None)

    def block_of(self, path: str) -> str:
        """The transformer block holding ``path`` (``"blocks_3"``, ``"temporal_blocks_0"``), or ``""``."""
        m = re.match(self.blocks, path)
        return m.group(0).rstrip("/") if m else ""

    def block_order(self, paths: Iterable[str]) -> list[str]:
        """The transformer blocks among ``paths``, in execution order."""
        found = {}
        for p in paths:
            m = re.match(self.blocks, p)
            if m:
                found[(int(m.group(2)), m.group(1))] = m.group(0).rstrip("/")
        return [found[k] for k in sorted(found)]

    def edge_blocks(self, paths: Iterable[str]) -> str:
        """Regex of the first and the last transformer block (execution order) among ``paths``:
        ``^(blocks_0|blocks_27)/`` for a 28-block PixArt, ``^(spatial_blocks_0|temporal_blocks_2)/`` for a
        3 + 3-block STDiT3."""
        order = self.block_order(paths)
        if not order:
            raise ValueError(f"{self.name}: no transformer block among the layers {list(paths)[:3]}...")
        return f"^({'|'.join(dict.fromkeys((order[0], order[-1])))})/"

    def attention_output_of(self, path: str) -> tuple[AttentionOutput, str] | None:
        """``(declaration, attention module path)`` when the Dense ``path`` reads an attention output, else None."""
        for a in self.attention_outputs:
            m = re.match(a.output_pattern(), path)
            if m:
                return a, path[: -len(a.output) - 1]
        return None

    def unit_pattern(self, block: str, group: str) -> str:
        """Regex of the layers of ``group`` inside ``block`` (a mixed-precision sensitivity unit)."""
        return f"^(?={re.escape(block)}/)(?:{self.group_pattern(group)})"

    # ------------------------------------------------------------------ models
    def null_caption_of(self, model: Any) -> str:
        """The model's null-caption policy: its config's ``null_caption`` if it has one, else the family's."""
        return getattr(getattr(model, "config", None), "null_caption", self.null_caption)


def _pixart_style(stacks: str, *, temporal: str | None = None) -> dict[str, str]:
    """Groups of the PixArt-style DiTs of this package (adaLN-single, cross-attention to captions)."""
    blk = rf"^(?:{stacks})_\d+/"
    groups = {
        "self_attn": blk + "attn/",
        "cross_attn": blk + "cross_attn/",
        "cross_kv": blk + r"cross_attn/(?:kv_linear|k_linear|v_linear)$",
        "ffn": blk + "mlp/",
        "adaln": r"^t_block(/|$)",
        "embedders": r"^[A-Za-z0-9]*_?embedder(/|$)",
        "final": r"^final_layer(/|$)",
    }
    if temporal is not None:
        groups["temporal_attn"] = temporal
        groups["self_attn"] = f"(?!{temporal})" + groups["self_attn"]
    return groups


def _attention_outputs(stacks: str, self_attn: str = "attn", cross: bool = True) -> tuple[AttentionOutput, ...]:
    """Self-attention modules (fused ``qkv``, V = block 2 of 3) and cross-attention (``kv_linear``, V = block
    1 of 2) of the DiTs of this package (:class:`models.layers.SelfAttention` / ``CrossAttention``)."""
    out = (AttentionOutput(rf"^(?:{stacks})_\d+/(?:{self_attn})", "qkv", 2, 3),)
    return out + ((AttentionOutput(rf"^(?:{stacks})_\d+/cross_attn", "kv_linear", 1, 2),) if cross else ())


_PIXART_ARGS = ("x", "timestep", "y", "mask", "data_info")
_T2I_FORMATS = ("pth-wrapped", "pth", "safetensors")

PIXART = Family(
    name="pixart",
    module=PixArt,
    config=PixArtConfig,
    archs=(
        Arch("pixart-alpha", _T2I_FORMATS, _PIXART_ARGS, MappingProxyType({"family": "pixart-alpha"}),
             "PixArt-α (original PixArt / PixArtMS .pth)"),
        Arch("pixart-sigma", _T2I_FORMATS, _PIXART_ARGS,
             MappingProxyType({"family": "pixart-sigma", "micro_condition": False, "model_max_length": 300,
                               "null_caption": "empty-prompt"}),
             "PixArt-Σ (original PixArtMS .pth)"),
        Arch("pixart-diffusers", ("diffusers",),
             ("hidden_states", "encoder_hidden_states", "timestep", "added_cond_kwargs", "cross_attention_kwargs",
              "attention_mask", "encoder_attention_mask", "return_dict"),
             MappingProxyType({"family": "pixart-diffusers", "null_caption": "empty-prompt"}),
             "diffusers PixArtTransformer2DModel folder"),
    ),
    sampler=SamplerDefaults("dpm_solver", 20, 4.5),
    groups=_pixart_style("blocks"),
    blocks=r"^(blocks)_(\d+)/",
    description="PixArt-α / Σ text-to-image DiT",
    attention_outputs=_attention_outputs("blocks"),
)

STDIT = Family(
    name="stdit",
    module=STDiT,
    config=STDiTConfig,
    archs=(Arch("stdit", ("pth", "pth-wrapped", "safetensors"), ("x", "timestep", "y", "mask"),
                description="Open-Sora 1.0 STDiT"),),
    sampler=SamplerDefaults("iddpm", 100, 7.0),
    groups=_pixart_style("blocks", temporal=r"^blocks_\d+/attn_temp/"),
    blocks=r"^(blocks)_(\d+)/",
    video=True,
    description="Open-Sora 1.0 spatial-temporal DiT",
    attention_outputs=_attention_outputs("blocks", "attn|attn_temp"),
)

OPENSORA12_CHUNK = (17, 5)  # Open-Sora 1.2's video VAE: 17 pixel frames -> 5 latent frames (a remainder: 4 -> 1)


def _opensora12_rflow_sizes(latent_shape: Sequence[int], given: Mapping[str, Any]) -> dict[str, Any]:
    """Pixel sizes of a ``(B, T, H, W, C)`` / ``(B, H, W, C)`` latent for the rectified-flow shift.

    The VAE is 8x spatially; in time every 17 pixel frames give 5 latent frames and a shorter remainder
    of ``f`` frames gives ``ceil(f / 4)``: ``T`` latent frames stand for ``T // 5 * 17 + 4 * (T % 5)``
    pixel frames (the longest such clip; 1 for images). The release's shift scales with
    ``num_frames // 17 * 5``, which is 0 for clips shorter than one chunk (2..16 frames): its sampler
    is undefined there, so such latents sample without the shift, as the bundled 8-frame model does."""
    if given.get("use_timestep_transform") is False or given.get("ratio") is not None:
        return {}
    shape = tuple(int(s) for s in latent_shape)
    (t, h, w) = (1, *shape[1:3]) if len(shape) == 4 else shape[1:4]
    chunk, latents = OPENSORA12_CHUNK
    frames = given.get("num_frames") or (1 if t == 1 else t // latents * chunk + 4 * (t % latents))
    if given.get("num_frames") is None and frames != 1 and frames < chunk:
        return {"use_timestep_transform": False}
    derived = {"height": h * 8, "width": w * 8, "num_frames": frames}
    return {k: v for k, v in derived.items() if given.get(k) is None}


STDIT3 = Family(
    name="stdit3",
    module=STDiT3,
    config=STDiT3Config,
    archs=(Arch("stdit3", ("safetensors", "pth", "pth-wrapped"),
                ("x", "timestep", "y", "mask", "x_mask", "fps", "height", "width"),
                description="Open-Sora 1.2 STDiT3"),),
    sampler=SamplerDefaults("rflow", 30, 7.0, size_keywords=_opensora12_rflow_sizes),
    groups=_pixart_style("spatial_blocks|temporal_blocks", temporal=r"^temporal_blocks_\d+/attn/"),
    blocks=r"^(spatial_blocks|temporal_blocks)_(\d+)/",
    video=True,
    description="Open-Sora 1.2 STDiT3 (rectified flow)",
    attention_outputs=_attention_outputs("spatial_blocks|temporal_blocks"),
)

# facebookresearch/DiT: class labels instead of captions (y = (B,) ints; the label num_classes is the null
# class of CFG), one adaLN-Zero modulation per block (group adaln: conditioning, not a block layer of the
# metric-decoupled groups, so the block pattern leaves it out), release sampling = sample.py's IDDPM
# respaced to 250 steps with cfg 4.0 (guidance on eps channels 0..2, DiT's own quirk).
DIT = Family(
    name="dit",
    module=DiT,
    config=DiTConfig,
    archs=(Arch("dit", ("pth",), ("x", "timestep", "y"),
                description="facebookresearch/DiT class-conditional DiT (DiT-XL-2-256x256.pt / -512x512.pt)"),),
    sampler=SamplerDefaults("iddpm", 250, 4.0),
    groups={
        "self_attn": r"^blocks_\d+/attn/",
        "ffn": r"^blocks_\d+/mlp/",
        "adaln": r"^blocks_\d+/adaLN_modulation/",
        "embedders": r"^[A-Za-z0-9]*_?embedder(/|$)",
        "final": r"^final_layer(/|$)",
    },
    blocks=r"^(blocks)_(\d+)/(?!adaLN_modulation/)",
    null_caption="null-class",
    description="DiT-XL/2 class-conditional image DiT (adaLN-Zero)",
    attention_outputs=_attention_outputs("blocks", cross=False),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (PIXART, STDIT, STDIT3, DIT)}
ARCHS: dict[str, Family] = {a.name: f for f in FAMILIES.values() for a in f.archs}


# ---------------------------------------------------------------------------------------------- components
ROLES: tuple[str, ...] = ("autoencoder", "text-encoder")


@dataclasses.dataclass(frozen=True)
class Component(_Declared):
    """A model of a release that is not the denoiser: an autoencoder (latents <-> pixels) or a text encoder.

    Declared once like a :class:`Family` (module, config, archs with their checkpoint formats), without the
    denoiser-only parts (sampler, layer groups, blocks). Its converter is ``conversion.CONVERTERS[name]``.
    Fixture cases call its methods through :attr:`Arch.methods`."""

    name: str
    role: str
    module: type
    config: type
    archs: tuple[Arch, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"component {self.name!r}: unknown role {self.role!r}; known: {ROLES}")


T5_ENCODER = Component(
    name="t5",
    role="text-encoder",
    module=T5Encoder,
    config=T5Config,
    archs=(Arch("t5-encoder", ("transformers",), ("input_ids", "attention_mask"), methods=MappingProxyType({"": ""}),
                description="transformers T5EncoderModel folder (T5 v1.1: DeepFloyd / google t5-v1_1-xxl)"),),
    description="T5 v1.1 text encoder of PixArt-α/Σ and Open-Sora",
)

# The autoencoders (models/vae.py, models/opensora_vae.py): fixture cases call decode and the encoders' means.
SD_VAE = Component(
    name="sd-vae",
    role="autoencoder",
    module=AutoencoderKL,
    config=AutoencoderKLConfig,
    archs=(Arch("sd-vae", ("diffusers",), ("sample",),
                methods=MappingProxyType({"decode": "decode", "encode": "encode_mean"}),
                description="diffusers AutoencoderKL vae/ folder (sd-vae-ft-ema / -mse, SDXL VAE)"),),
    description="Stable Diffusion KL autoencoder of DiT, PixArt-α/Σ and Open-Sora 1.0",
)

OPENSORA_VAE = Component(
    name="opensora-vae",
    role="autoencoder",
    module=OpenSoraVAE,
    config=OpenSoraVAEConfig,
    archs=(Arch("opensora-vae-v1.2", ("safetensors",), ("x",),
                methods=MappingProxyType({"decode": "decode", "temporal_vae.encode": "encode_temporal_mean",
                                          "spatial_vae.module.encode": "encode_spatial_mean"}),
                description="Open-Sora 1.2 VideoAutoencoderPipeline (hpcai-tech/OpenSora-VAE-v1.2)"),),
    description="Open-Sora 1.2 video autoencoder (per-frame SDXL VAE + causal temporal VAE)",
)

# Each component entry is declared above this line and named here.
COMPONENTS: dict[str, Component] = {c.name: c for c in (T5_ENCODER, SD_VAE, OPENSORA_VAE)}
COMPONENT_ARCHS: dict[str, Component] = {a.name: c for c in COMPONENTS.values() for a in c.archs}


def owner_of_arch(arch: str) -> Family | Component:
    """The family or component converting checkpoints of ``arch`` (``ValueError`` naming the known archs)."""
    owner = ARCHS.get(arch) or COMPONENT_ARCHS.get(arch)
    if owner is None:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join([*ARCHS, *COMPONENT_ARCHS])}")
    return owner


def family_of(model: Any) -> Family:
    """The family of a model instance (or module class)."""
    fam = find_family(model)
    if fam is None:
        name = (model if isinstance(model, type) else type(model)).__name__
        raise ValueError(f"{name} is not a registered model family; known: {', '.join(FAMILIES)}")
    return fam


def find_family(model: Any) -> Family | None:
    """The family of a model instance, or None for a module no family declares (e.g. a test toy)."""
    cls = model if isinstance(model, type) else type(model)
    return next((f for f in FAMILIES.values() if issubclass(cls, f.module)), None)


def family_of_arch(arch: str) -> Family:
    """The family converting checkpoints of ``arch`` (``ValueError`` naming the known archs)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch]


def family_named(name: str) -> Family:
    """A family by its name or by its module class name (``"PixArt"``, as older model.json files store)."""
    if name in FAMILIES:
        return FAMILIES[name]
    for f in FAMILIES.values():
        if f.module.__name__ == name:
            return f
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")


def group_of_path(path: str) -> str | None:
    """Block group of a Dense path when the family is unknown: the families' own patterns agree on every
    path they share (tested), so the first family that classifies the path decides."""
    return next((g for f in FAMILIES.values() if (g := f.group_of(path)) is not None), None)


__all__ = [
    "ARCHS",
    "Arch",
    "AttentionOutput",
    "BLOCK_GROUPS",
    "COMPONENTS",
    "COMPONENT_ARCHS",
    "Component",
    "DERIVED_GROUPS",
    "FAMILIES",
    "Family",
    "GROUPS",
    "SamplerDefaults",
    "family_named",
    "family_of",
    "find_family",
    "family_of_arch",
    "group_of_path",
    "owner_of_arch",
    "ROLES",
]

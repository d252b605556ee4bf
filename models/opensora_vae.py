"""Open-Sora 1.2's video autoencoder (``VideoAutoencoderPipeline``, ``hpcai-tech/OpenSora-VAE-v1.2``), channels-last.

Two stages, kept under the original names so that the converter maps keys one to one:

* ``spatial_vae.module``: the SDXL VAE (:class:`models.vae.AutoencoderKL`) applied to every frame; the
  pipeline feeds it ``x / 0.18215`` — a constant hard-coded in Open-Sora's ``VideoAutoencoderKL``, although
  the SDXL VAE's own ``scaling_factor`` is 0.13025 (:data:`SPATIAL_SCALE`).
* ``temporal_vae``: ``VAE_Temporal`` (MAGVIT-style) on the 4-channel frame latents: causal 3-D convolutions
  (zero padding of ``k_t - stride_t`` frames at the front only, ``k//2`` around H and W), ResBlocks of
  GroupNorm (eps 1e-5, PyTorch's default) → SiLU → conv ×2, temporal downsampling by stride-2 convs in
  the encoder and conv + depth-to-time in the decoder (``temporal_downsample``; 4× for the release).
* ``scale`` / ``shift`` ``(1, C, 1, 1, 1)`` buffers: the sampler's latents are normalised,
  ``decode`` first computes ``z · scale + shift``.

Micro-frame chunking (``micro_frame_size``, 17 in the release): the latent is decoded in chunks of
``ceil(micro_frame_size / 4)`` latent frames that never see each other; chunk ``k`` stands for
``n_k = min(micro_frame_size, frames left)`` frames and drops the first ``(-n_k) mod 4`` of its ``4·t``
decoded frames (:func:`chunk_plan`). 17 frames ↔ 5 latent frames; a shorter remainder of ``f`` frames ↔
``ceil(f / 4)``.

Module methods (channels-last): ``vae.apply(v, z, num_frames, method="decode")``: normalised latent
``(B, T_lat, h, w, 4)`` → pixels ``(B, num_frames, 8h, 8w, 3)``; ``method="encode_mean"``: pixels →
normalised latent (posterior means; the original samples); ``"encode_temporal_mean"`` /
``"encode_spatial_mean"``: the two stages' deterministic encoders (``temporal_vae.encode(x_z).mean``,
``spatial_vae.module.encode(image).latent_dist.mean``).

Bounded-memory, jittable decoding for generation: :func:`decode` ``(model, params, z, num_frames,
batch_size=, tile=)`` decodes the temporal chunks one after another and the frames in micro-batches of
``micro_batch_size`` (4 in the release), optionally tiled (:func:`models.vae.decode`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import vae as sd_vae
from models.config import COMMON_NOOP_KEYS, ConfigMixin, as_tuples
from models.vae import AutoencoderKL, AutoencoderKLConfig, GroupNorm

Dtype = Any
Array = jax.Array

SPATIAL_SCALE = 0.18215  # Open-Sora's VideoAutoencoderKL divides/multiplies by this, whatever the VAE
TEMPORAL_NORM_EPS = 1e-5  # nn.GroupNorm's default in VAE_Temporal
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"swish": nn.silu, "relu": nn.relu}

# The released spatial VAE: the SDXL VAE (PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, subfolder vae).
SDXL_VAE = AutoencoderKLConfig(sample_size=1024, scaling_factor=0.13025)


@dataclasses.dataclass(frozen=True)
class VAETemporalConfig(ConfigMixin):
    """``VAE_Temporal`` arguments (defaults: ``VAE_Temporal_SD``, the release)."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    num_groups: int = 32
    activation_fn: str = "swish"

    def __post_init__(self):
        object.__setattr__(self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        if self.activation_fn not in ACTIVATIONS:
            raise ValueError(f"VAETemporalConfig.activation_fn {self.activation_fn!r}: choose one of {sorted(ACTIVATIONS)}")
        widths = [self.filters * m for m in self.channel_multipliers]
        if not widths or min(widths) < 1 or any(w % self.num_groups for w in widths):
            raise ValueError(f"VAETemporalConfig: widths filters * channel_multipliers = {widths} must be positive "
                             f"multiples of num_groups {self.num_groups}")
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(f"VAETemporalConfig: temporal_downsample {self.temporal_downsample} needs "
                             f"{len(self.channel_multipliers) - 1} entries (one per channel multiplier but the last)")

    @property
    def time_downsample_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)


@dataclasses.dataclass(frozen=True)
class OpenSoraVAEConfig(ConfigMixin):
    """The pipeline: its two stages' configs, ``micro_frame_size`` (``None``: the whole clip at once) and the
    spatial VAE's ``micro_batch_size`` (frames per spatial decode step in :func:`decode`)."""

    spatial_vae: AutoencoderKLConfig = dataclasses.field(default_factory=lambda: SDXL_VAE)
    temporal_vae: VAETemporalConfig = dataclasses.field(default_factory=VAETemporalConfig)
    micro_frame_size: int | None = 17
    micro_batch_size: int | None = 4

    NOOP_KEYS: ClassVar[frozenset] = COMMON_NOOP_KEYS

    def __post_init__(self):
        if isinstance(self.spatial_vae, dict):
            object.__setattr__(self, "spatial_vae", AutoencoderKLConfig.from_dict(self.spatial_vae))
        if isinstance(self.temporal_vae, dict):
            object.__setattr__(self, "temporal_vae", VAETemporalConfig.from_dict(self.temporal_vae))
        if self.micro_frame_size is not None and self.micro_frame_size < 1:
            raise ValueError(f"micro_frame_size must be a positive number of frames or None, got {self.micro_frame_size}")

    @classmethod
    def from_dict(cls, d: dict):
        d = {k: (v if k in ("spatial_vae", "temporal_vae") else as_tuples(v)) for k, v in d.items()}
        return super().from_dict(d)

    @property
    def micro_latent_frames(self) -> int | None:
        """Latent frames per chunk (``ceil(micro_frame_size / 4)``: 5 for the release's 17)."""
        f = self.temporal_vae.time_downsample_factor
        return None if self.micro_frame_size is None else -(-self.micro_frame_size // f)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` clip (the pipeline's ``get_latent_size``)."""
        f, m = self.temporal_vae.time_downsample_factor, self.micro_frame_size
        if m is None:
            return -(-num_frames // f)
        return num_frames // m * self.micro_latent_frames + -(-(num_frames % m) // f)

    def max_frames(self, latent_frames: int) -> int:
        """The longest clip that ``latent_frames`` latent frames decode to (the default ``num_frames``)."""
        f, m, mz = self.temporal_vae.time_downsample_factor, self.micro_frame_size, self.micro_latent_frames
        if m is None:
            return latent_frames * f
        return latent_frames // mz * m + latent_frames % mz * f


def chunk_plan(config: OpenSoraVAEConfig, latent_frames: int, num_frames: int | None) -> list[tuple[int, int, int]]:
    """``[(start, stop, frames)]``: latent frames ``[start, stop)`` decode (on their own) to the last ``frames``
    of their ``4·(stop - start)`` temporal-decoder frames. ``num_frames=None``: :meth:`~OpenSoraVAEConfig.max_frames`.
    ``ValueError`` when ``num_frames`` does not have ``latent_frames`` latent frames."""
    if num_frames is None:
        num_frames = config.max_frames(latent_frames)
    num_frames = int(num_frames)
    if num_frames < 1 or config.latent_frames(num_frames) != latent_frames:
        lo = next((n for n in range(1, config.max_frames(latent_frames) + 1)
                   if config.latent_frames(n) == latent_frames), None)
        allowed = f"{lo}..{config.max_frames(latent_frames)}" if lo else "none"
        raise ValueError(f"num_frames={num_frames} does not fit a latent of {latent_frames} frames "
                         f"(micro_frame_size {config.micro_frame_size}); allowed: {allowed}")
    step = config.micro_latent_frames or latent_frames
    size = config.micro_frame_size or num_frames
    plan, left = [], num_frames
    for start in range(0, latent_frames, step):
        plan.append((start, min(start + step, latent_frames), min(size, left)))
        left -= size
    return plan


def _each(fn: Callable[[Array], Array], items: Sequence[Array]) -> list[Array]:
    return [fn(a) for a in items]


def decode_chunks(z: Array, plan: list[tuple[int, int, int]], temporal: Callable[[Array], Array],
                  mapper: Callable[..., list[Array]] = _each) -> Array:
    """The temporal stage of the pipeline's decode: every chunk of ``plan`` through ``temporal`` (a full decode
    of a chunk: ``4·t`` frames), the first frames of each dropped, the chunks joined in time.
    ``mapper(fn, items)``: how the chunks are run (a loop, or :func:`models.vae.map_in_order`)."""
    raw = mapper(temporal, [z[:, s:e] for s, e, _ in plan])
    return jnp.concatenate([r[:, r.shape[1] - n :] for r, (_, _, n) in zip(raw, plan)], axis=1)


# ----------------------------------------------------------------------------------------------- layers


class CausalConv3d(nn.Module):
    """``CausalConv3d``: zero pad H, W by ``k//2`` on both sides and T by ``k_t - stride_t`` frames at the
    front, then a valid 3-D convolution (the weights under ``conv``). ``x (B, T, H, W, C)``."""

    features: int
    kernel: tuple[int, int, int] = (3, 3, 3)
    stride_t: int = 1
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kt, kh, kw = self.kernel
        pad = ((0, 0), (kt - self.stride_t, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
        x = jnp.pad(x, pad)
        return nn.Conv(self.features, self.kernel, strides=(self.stride_t, 1, 1), padding="VALID",
                       use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)


class ResBlock3d(nn.Module):
    """``VAE_Temporal``'s ``ResBlock``: GN → act → conv3×3×3 → GN → act → conv3×3×3 (no biases), plus the
    input (a 1×1×1 ``conv3`` when the width changes)."""

    filters: int
    groups: int
    activation: str = "swish"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        act = ACTIVATIONS[self.activation]
        h = act(GroupNorm(self.groups, TEMPORAL_NORM_EPS, self.param_dtype, name="norm1")(x))
        h = CausalConv3d(self.filters, name="conv1", **kw)(h)
        h = act(GroupNorm(self.groups, TEMPORAL_NORM_EPS, self.param_dtype, name="norm2")(h))
        h = CausalConv3d(self.filters, name="conv2", **kw)(h)
        if x.shape[-1] != self.filters:
            x = CausalConv3d(self.filters, (1, 1, 1), name="conv3", **kw)(x)
        return h + x


class ResStack(nn.Module):
    """``num`` ResBlocks named ``0, 1, …`` (the original's nested ``block_res_blocks[i][j]``)."""

    filters: int
    num: int
    groups: int
    activation: str = "swish"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.num):
            x = ResBlock3d(self.filters, self.groups, self.activation, self.dtype, self.param_dtype, name=str(j))(x)
        return x


def depth_to_time(x: Array, ts: int) -> Array:
    """``B (C ts) T H W -> B C (T ts) H W`` in channels-last: channel ``c·ts + s`` becomes frame ``t·ts + s``."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h, w, c // ts, ts)
    return jnp.moveaxis(x, 5, 2).reshape(b, t * ts, h, w, c // ts)


class _TemporalCoder(nn.Module):
    """What the temporal encoder and decoder share: the config, the ResBlock arguments, the output norm."""

    config: VAETemporalConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def _kw(self, **extra: Any) -> dict[str, Any]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, **extra)

    def _res(self) -> dict[str, Any]:
        return self._kw(groups=self.config.num_groups, activation=self.config.activation_fn)

    def _norm_act(self, x: Array) -> Array:
        cfg = self.config
        return ACTIVATIONS[cfg.activation_fn](GroupNorm(cfg.num_groups, TEMPORAL_NORM_EPS, self.param_dtype,
                                                        name="norm1")(x))


class TemporalEncoder(_TemporalCoder):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        x = CausalConv3d(cfg.filters, name="conv_in", **self._kw(use_bias=False))(x)
        n = len(cfg.channel_multipliers)
        for i, mult in enumerate(cfg.channel_multipliers):
            x = ResStack(cfg.filters * mult, cfg.num_res_blocks, name=f"block_res_blocks_{i}", **self._res())(x)
            if i < n - 1 and cfg.temporal_downsample[i]:
                x = CausalConv3d(cfg.filters * mult, stride_t=2, name=f"conv_blocks_{i}", **self._kw())(x)
        for j in range(cfg.num_res_blocks):
            x = ResBlock3d(x.shape[-1], name=f"res_blocks_{j}", **self._res())(x)
        return CausalConv3d(2 * cfg.latent_embed_dim, (1, 1, 1), name="conv2", **self._kw())(self._norm_act(x))


class TemporalDecoder(_TemporalCoder):
    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg = self.config
        top = cfg.filters * cfg.channel_multipliers[-1]
        x = CausalConv3d(top, name="conv1", **self._kw())(z)
        for j in range(cfg.num_res_blocks):
            x = ResBlock3d(top, name=f"res_blocks_{j}", **self._res())(x)
        for i in reversed(range(len(cfg.channel_multipliers))):
            x = ResStack(cfg.filters * cfg.channel_multipliers[i], cfg.num_res_blocks, name=f"block_res_blocks_{i}",
                         **self._res())(x)
            if i > 0 and cfg.temporal_downsample[i - 1]:
                x = CausalConv3d(2 * x.shape[-1], name=f"conv_blocks_{i - 1}", **self._kw())(x)
                x = depth_to_time(x, 2)
        return CausalConv3d(cfg.in_out_channels, name="conv_out", **self._kw())(self._norm_act(x))


class VAETemporal(nn.Module):
    """``VAE_Temporal``: ``x (B, T, H, W, C)`` frame latents ↔ ``(B, ceil(T/4), H, W, C)``."""

    config: VAETemporalConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = TemporalEncoder(cfg, **kw)
        self.decoder = TemporalDecoder(cfg, **kw)
        self.quant_conv = CausalConv3d(2 * cfg.embed_dim, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(cfg.latent_embed_dim, (1, 1, 1), **kw)

    def encode_mean(self, x: Array) -> Array:
        """Posterior mean (``encode(x).mean``): ``T`` padded at the front with zero frames to a multiple of 4."""
        pad = -x.shape[1] % self.config.time_downsample_factor
        x = jnp.pad(x, ((0, 0), (pad, 0)) + ((0, 0),) * (x.ndim - 2))
        return jnp.split(self.quant_conv(self.encoder(x)), 2, axis=-1)[0]

    def decode(self, z: Array, num_frames: int | None = None) -> Array:
        """``(B, t, h, w, C)`` → ``4·t`` frames, less the first ``(-num_frames) mod 4`` (the original's time padding)."""
        x = self.decoder(self.post_quant_conv(z))
        return x if num_frames is None else x[:, -int(num_frames) % self.config.time_downsample_factor :]


class _SpatialVAE(nn.Module):
    """Open-Sora's ``VideoAutoencoderKL``: the diffusers VAE under ``module``."""

    config: AutoencoderKLConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.module = AutoencoderKL(self.config, dtype=self.dtype, param_dtype=self.param_dtype)


class OpenSoraVAE(nn.Module):
    """``VideoAutoencoderPipeline`` (see the module docstring)."""

    config: OpenSoraVAEConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.spatial_vae = _SpatialVAE(cfg.spatial_vae, **kw)
        self.temporal_vae = VAETemporal(cfg.temporal_vae, **kw)
        c = cfg.temporal_vae.in_out_channels
        self.scale = self.param("scale", nn.initializers.ones, (1, c, 1, 1, 1), self.param_dtype)
        self.shift = self.param("shift", nn.initializers.zeros, (1, c, 1, 1, 1), self.param_dtype)

    def __call__(self, x: Array) -> Array:
        """Reconstruction ``decode(encode_mean(x))`` (touches every parameter: used to initialise)."""
        return self.decode(self.encode_mean(x), x.shape[1])

    def encode_spatial_mean(self, image: Array) -> Array:
        """``spatial_vae.module.encode(image).latent_dist.mean``: ``(B, H, W, 3)`` → ``(B, H/8, W/8, 4)``."""
        return self.spatial_vae.module.encode_mean(image)

    def encode_temporal_mean(self, x_z: Array) -> Array:
        """``temporal_vae.encode(x_z).mean``: frame latents ``(B, T, h, w, 4)`` → ``(B, ceil(T/4), h, w, 4)``."""
        return self.temporal_vae.encode_mean(x_z)

    def encode_mean(self, x: Array) -> Array:
        """Pixels ``(B, T, H, W, 3)`` → the normalised latent of the pipeline's ``encode`` with every
        posterior replaced by its mean (per-frame spatial means ``· 0.18215``, temporal chunks of
        ``micro_frame_size`` frames, ``(z - shift) / scale``)."""
        b, t = x.shape[:2]
        x_z = self.encode_spatial_mean(x.reshape(b * t, *x.shape[2:])) * SPATIAL_SCALE
        x_z = x_z.reshape(b, t, *x_z.shape[1:])
        step = self.config.micro_frame_size or t
        z = jnp.concatenate([self.encode_temporal_mean(x_z[:, i : i + step]) for i in range(0, t, step)], axis=1)
        return (z - self._vector(self.shift)) / self._vector(self.scale)

    def decode(self, z: Array, num_frames: int | None = None) -> Array:
        """Normalised latent ``(B, T_lat, h, w, 4)`` → ``(B, num_frames, 8h, 8w, 3)`` (``num_frames`` default:
        the longest clip of ``T_lat`` latent frames)."""
        z = z * self._vector(self.scale) + self._vector(self.shift)
        plan = chunk_plan(self.config, z.shape[1], num_frames)
        x_z = decode_chunks(z, plan, lambda c: self.temporal_vae.decode(c))
        b, t = x_z.shape[:2]
        x = self.spatial_vae.module.decode(x_z.reshape(b * t, *x_z.shape[2:]) / SPATIAL_SCALE)
        return x.reshape(b, t, *x.shape[1:])

    @staticmethod
    def _vector(buffer: Array) -> Array:
        return buffer.reshape(-1)

    def init_inputs(self) -> dict[str, Array]:
        """The smallest clip that reaches every parameter."""
        f, s = self.config.temporal_vae.time_downsample_factor, self.config.spatial_vae.downsample_factor
        return {"x": jnp.zeros((1, f, s, s, self.config.spatial_vae.in_channels), jnp.float32)}


def decode(model: OpenSoraVAE, params: Any, z: Array, num_frames: int | None = None, *,
           batch_size: int | None | str = "config", tile: int | bool | None = None,
           overlap: float = sd_vae.TILE_OVERLAP) -> Array:
    """:meth:`OpenSoraVAE.decode` in bounded memory: the temporal chunks one after another (one trace per
    chunk length), then the frames in micro-batches of ``batch_size`` (``"config"``: the model's
    ``micro_batch_size``), each optionally tiled (:func:`models.vae.decode`). Jittable with ``model``,
    ``num_frames`` and the options bound."""
    params = sd_vae.unwrap(params)
    cfg = model.config
    z = z * params["scale"].reshape(-1) + params["shift"].reshape(-1)
    plan = chunk_plan(cfg, z.shape[1], num_frames)
    temporal = VAETemporal(cfg.temporal_vae, dtype=model.dtype, param_dtype=model.param_dtype)
    x_z = decode_chunks(z, plan, lambda c: temporal.apply({"params": params["temporal_vae"]}, c, method="decode"),
                        sd_vae.map_in_order)
    spatial = AutoencoderKL(cfg.spatial_vae, dtype=model.dtype, param_dtype=model.param_dtype)
    bs = cfg.micro_batch_size if batch_size == "config" else batch_size
    return sd_vae.decode(spatial, params["spatial_vae"]["module"], x_z / SPATIAL_SCALE, tile=tile,
                         overlap=overlap, batch_size=bs)


__all__ = [
    "OpenSoraVAE",
    "OpenSoraVAEConfig",
    "SDXL_VAE",
    "SPATIAL_SCALE",
    "VAETemporal",
    "VAETemporalConfig",
    "chunk_plan",
    "decode",
    "decode_chunks",
    "depth_to_time",
]

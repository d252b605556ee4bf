"""The Stable Diffusion KL autoencoder (diffusers ``AutoencoderKL``, SD block structure), channels-last Flax port.

One class serves every release that uses this structure: ``stabilityai/sd-vae-ft-ema`` / ``-ft-mse`` (DiT,
PixArt-α, Open-Sora 1.0; ``scaling_factor`` 0.18215) and the SDXL VAE (PixArt-Σ, Open-Sora 1.2's spatial
VAE; 0.13025) — same keys and shapes, other scaling factor (:class:`AutoencoderKLConfig`).

Structure (diffusers names, kept as Flax module names so the converter maps keys one to one):
``encoder`` = ``conv_in`` → ``down_blocks_i`` (``layers_per_block`` ResNet blocks, all but the last end in a
stride-2 ``downsamplers_0`` after a (0, 1) zero pad) → ``mid_block`` (resnet, one-head attention over the
``H·W`` tokens, resnet) → GroupNorm → SiLU → ``conv_out`` (mean and log-variance) → ``quant_conv``;
``decoder`` = ``post_quant_conv`` → ``conv_in`` → ``mid_block`` → ``up_blocks_i`` (``layers_per_block + 1``
ResNet blocks, all but the last end in nearest-neighbour ×2 + conv) → GroupNorm → SiLU → ``conv_out``.
Every GroupNorm has eps 1e-6 and splits channels into groups contiguously (PyTorch's convention).

Module methods (channels-last; ``x`` pixels in [-1, 1], ``z`` latents):

* ``vae.apply(v, z, method="decode")``: ``z (B, h, w, C_lat)`` → ``(B, 8h, 8w, 3)``. ``z`` is the latent
  the decoder consumes, i.e. the sampler's latent ALREADY divided by ``config.scaling_factor``
  (diffusers' ``vae.decode(latents / scaling_factor)``).
* ``vae.apply(v, x, method="encode_mean")``: the posterior mean ``(B, H/8, W/8, C_lat)`` (unscaled);
  ``method="encode"``: ``(mean, logvar)`` with the log-variance clamped to [-30, 20] as diffusers does.

Jittable helpers for generation (pure functions of ``(model, params, latents)``; bind ``model`` and the
keyword options with ``functools.partial`` before ``jax.jit``):

* :func:`decode` — any leading axes (an image batch ``(B, h, w, C)`` or videos ``(B, T, h, w, C)``, decoded
  frame by frame as Open-Sora 1.0's ``VideoAutoencoderKL`` does) in micro-batches of ``batch_size`` images
  (``lax.map``: one micro-batch in memory at a time), each optionally decoded in overlapping tiles of
  ``tile`` latent pixels blended exactly like diffusers' ``enable_tiling()`` (``tile=True``: diffusers'
  default tile of ``sample_size / 8``), so a 1024² image or a 16-frame 512² clip decodes in bounded memory.
* :func:`decode_latents` — the same from the sampler's latents (divides by ``scaling_factor``).

Example::

    model, params = conversion.load_checkpoint("PixArt-Sigma-XL-2-1024-MS/vae", "sd-vae")
    run = jax.jit(functools.partial(decode_latents, model, tile=True, batch_size=1))
    images = run(params, latents)          # (B, 1024, 1024, 3) in about [-1, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import reference_attention
from models.config import COMMON_NOOP_KEYS, ConfigMixin
from models.layers import Dense

Dtype = Any
Array = jax.Array

VAE_NORM_EPS = 1e-6  # every GroupNorm of the diffusers AutoencoderKL
TILE_OVERLAP = 0.25  # diffusers' tile_overlap_factor


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(ConfigMixin):
    """diffusers ``AutoencoderKL`` arguments (the fields of ``vae/config.json``) that this structure reads.

    ``sample_size``: the pixel size the VAE was trained at; diffusers' tiled decoding uses tiles of that
    size (``sample_size / 8`` latent pixels). ``scaling_factor`` / ``shift_factor``: what a pipeline
    divides / subtracts the sampler's latents by before :meth:`AutoencoderKL.decode` (the model itself
    never applies them)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 256
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    # diffusers bookkeeping and options with no effect on the math of this structure (the block types and
    # the activation are checked by the converter)
    NOOP_KEYS: ClassVar[frozenset] = COMMON_NOOP_KEYS | {
        "_class_name", "_diffusers_version", "_name_or_path", "force_upcast", "latents_mean", "latents_std",
        "down_block_types", "up_block_types", "act_fn",
    }

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if isinstance(self.sample_size, (list, tuple)):
            object.__setattr__(self, "sample_size", int(self.sample_size[0]))
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if not self.block_out_channels or bad:
            raise ValueError(f"AutoencoderKLConfig: block_out_channels {self.block_out_channels} must be non-empty "
                             f"multiples of norm_num_groups {self.norm_num_groups}")

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent pixel along each side (8 for the SD/SDXL VAEs)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def default_tile(self) -> int:
        """diffusers' ``tile_latent_min_size``: the tile side in latent pixels of ``enable_tiling()``."""
        return int(self.sample_size / self.downsample_factor)


# ----------------------------------------------------------------------------------------------- layers


class GroupNorm(nn.Module):
    """PyTorch ``GroupNorm`` on channels-last input ``(B, ..., C)``: statistics in float32 per sample and
    group of contiguous channels over every other axis; affine ``weight`` / ``bias``."""

    groups: int
    eps: float = VAE_NORM_EPS
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xf = x.astype(jnp.float32).reshape(x.shape[0], -1, self.groups, c // self.groups)
        mean = xf.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(xf - mean).mean(axis=(1, 3), keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def conv2d(features: int, name: str, *, kernel: int = 3, stride: int = 1, padding: Any = None, dtype=None,
           param_dtype=jnp.float32) -> nn.Conv:
    """A PyTorch ``Conv2d`` (``padding = kernel // 2`` unless given)."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
                   dtype=dtype, param_dtype=param_dtype, name=name)


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` without time embedding: GN → SiLU → conv → GN → SiLU → conv, plus the
    input (through a 1×1 ``conv_shortcut`` when the width changes)."""

    out_channels: int
    groups: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(GroupNorm(self.groups, param_dtype=self.param_dtype, name="norm1")(x))
        h = conv2d(self.out_channels, "conv1", **kw)(h)
        h = nn.silu(GroupNorm(self.groups, param_dtype=self.param_dtype, name="norm2")(h))
        h = conv2d(self.out_channels, "conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv2d(self.out_channels, "conv_shortcut", kernel=1, **kw)(x)
        return x + h


class MidAttention(nn.Module):
    """The mid-block attention: ONE head as wide as the block over the ``H·W`` tokens (row-major), with its
    own GroupNorm and a residual connection. Not a quantization target; it calls the float reference
    attention directly (a single head of width 512 is nothing the attention kernels are built for)."""

    groups: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t = GroupNorm(self.groups, param_dtype=self.param_dtype, name="group_norm")(x).reshape(b, h * w, 1, c)
        q, k, v = (Dense(c, name=n, **kw)(t) for n in ("to_q", "to_k", "to_v"))
        out = reference_attention(q, k, v).reshape(b, h * w, c)
        return x + Dense(c, name="to_out_0", **kw)(out).reshape(b, h, w, c)


class MidBlock(nn.Module):
    """diffusers ``UNetMidBlock2D``: resnet, (attention, resnet)."""

    groups: int
    add_attention: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = MidAttention(self.groups, name="attentions_0", **kw)(x)
        return ResnetBlock2D(c, self.groups, name="resnets_1", **kw)(x)


class Resample(nn.Module):
    """diffusers ``Downsample2D`` of the VAE encoder (zero pad right/bottom by one, 3×3 conv stride 2) or
    ``Upsample2D`` (``up``: nearest-neighbour ×2, then a 3×3 conv); the weights under ``conv``."""

    features: int
    up: bool
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.up:
            return conv2d(self.features, "conv", **kw)(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
        return conv2d(self.features, "conv", stride=2, padding=0, **kw)(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class SampledBlock(nn.Module):
    """diffusers ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``: ``num_layers`` ResNet blocks, then
    ``downsamplers_0`` / ``upsamplers_0`` (``sampler`` ``"down"`` / ``"up"``; ``None`` in the last block)."""

    out_channels: int
    groups: int
    num_layers: int
    sampler: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, name=f"resnets_{j}", **kw)(x)
        if self.sampler is not None:
            x = Resample(self.out_channels, self.sampler == "up", name=f"{self.sampler}samplers_0", **kw)(x)
        return x


class Encoder(nn.Module):
    config: AutoencoderKLConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        g, chans = cfg.norm_num_groups, cfg.block_out_channels
        x = conv2d(chans[0], "conv_in", **kw)(x)
        for i, c in enumerate(chans):
            x = SampledBlock(c, g, cfg.layers_per_block, "down" if i < len(chans) - 1 else None,
                             name=f"down_blocks_{i}", **kw)(x)
        x = MidBlock(g, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
        x = nn.silu(GroupNorm(g, param_dtype=self.param_dtype, name="conv_norm_out")(x))
        return conv2d(2 * cfg.latent_channels, "conv_out", **kw)(x)


class Decoder(nn.Module):
    config: AutoencoderKLConfig
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        g, chans = cfg.norm_num_groups, tuple(reversed(cfg.block_out_channels))
        x = conv2d(chans[0], "conv_in", **kw)(z)
        x = MidBlock(g, cfg.mid_block_add_attention, name="mid_block", **kw)(x)
        for i, c in enumerate(chans):
            x = SampledBlock(c, g, cfg.layers_per_block + 1, "up" if i < len(chans) - 1 else None,
                             name=f"up_blocks_{i}", **kw)(x)
        x = nn.silu(GroupNorm(g, param_dtype=self.param_dtype, name="conv_norm_out")(x))
        return conv2d(cfg.out_channels, "conv_out", **kw)(x)


class AutoencoderKL(nn.Module):
    """The KL autoencoder (see the module docstring for the methods and the latent convention)."""

    config: AutoencoderKLConfig
    dtype: Dtype | None = None  # compute dtype; None = promote(input, params)
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        if cfg.use_quant_conv:
            self.quant_conv = conv2d(2 * cfg.latent_channels, "quant_conv", kernel=1, **kw)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = conv2d(cfg.latent_channels, "post_quant_conv", kernel=1, **kw)

    def __call__(self, x: Array) -> Array:
        """Reconstruction ``decode(encode_mean(x))`` (touches every parameter: used to initialise)."""
        return self.decode(self.encode_mean(x))

    def encode_moments(self, x: Array) -> Array:
        """``(B, H, W, 3)`` pixels → ``(B, H/8, W/8, 2·C_lat)``: posterior mean and log-variance (unclamped)."""
        m = self.encoder(x)
        return self.quant_conv(m) if self.config.use_quant_conv else m

    def encode(self, x: Array) -> tuple[Array, Array]:
        """``(mean, logvar)`` of the posterior, the log-variance clamped to [-30, 20] (diffusers)."""
        mean, logvar = jnp.split(self.encode_moments(x), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode_mean(self, x: Array) -> Array:
        """The posterior mean (``encode(x).latent_dist.mean``; not multiplied by ``scaling_factor``)."""
        return jnp.split(self.encode_moments(x), 2, axis=-1)[0]

    def decode(self, z: Array) -> Array:
        """``(B, h, w, C_lat)`` latent (already divided by ``scaling_factor``) → ``(B, 8h, 8w, 3)`` pixels."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def init_inputs(self) -> dict[str, Array]:
        """The smallest input that reaches every parameter (one latent pixel)."""
        f = self.config.downsample_factor
        return {"x": jnp.zeros((1, f, f, self.config.in_channels), jnp.float32)}


# ------------------------------------------------------------------------------- bounded-memory decoding


def map_in_order(fn: Callable[[Array], Array], items: Sequence[Array]) -> list[Array]:
    """``[fn(a) for a in items]`` where items of one shape are stacked and run one after another
    (``lax.map``): one trace per distinct shape, one item's intermediates in memory at a time."""
    out: list[Any] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for k, a in enumerate(items):
        groups.setdefault((tuple(a.shape), jnp.dtype(a.dtype)), []).append(k)
    for idx in groups.values():
        if len(idx) == 1:
            out[idx[0]] = fn(items[idx[0]])
            continue
        ys = jax.lax.map(fn, jnp.stack([items[k] for k in idx]))
        for n, k in enumerate(idx):
            out[k] = ys[n]
    return out


def map_batches(fn: Callable[[Array], Array], x: Array, batch_size: int | None) -> Array:
    """``fn(x)`` computed ``batch_size`` rows at a time (``lax.map``; the last batch zero-padded and the
    padding dropped). ``fn`` must treat rows independently (every VAE does: GroupNorm is per sample)."""
    n = x.shape[0]
    if batch_size is None or batch_size >= n:
        return fn(x)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of images, got {batch_size}")
    pad = -n % batch_size
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(-1, batch_size, *x.shape[1:])
    ys = jax.lax.map(fn, xs)
    return ys.reshape(-1, *ys.shape[2:])[:n]


def _blend(a: Array, b: Array, extent: int, axis: int) -> Array:
    """diffusers ``blend_v`` (axis 1) / ``blend_h`` (axis 2): the first ``extent`` rows/columns of ``b`` fade
    in from the last ``extent`` of ``a``."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    ramp = np.arange(extent, dtype=np.float64) / extent
    shape = [1] * b.ndim
    shape[axis] = extent
    w_b = jnp.asarray(ramp.reshape(shape), b.dtype)
    w_a = jnp.asarray((1.0 - ramp).reshape(shape), b.dtype)
    tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    rest = jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)
    return jnp.concatenate([tail * w_a + head * w_b, rest], axis=axis)


def tiled(decode_fn: Callable[[Array], Array], z: Array, tile: int, factor: int, overlap: float = TILE_OVERLAP) -> Array:
    """diffusers' ``AutoencoderKL.tiled_decode`` for any latent → pixel map ``decode_fn`` (``factor`` pixels per
    latent pixel): tiles of ``tile`` latent pixels every ``int(tile·(1-overlap))``, each decoded on its own,
    blended in raster order with the already blended tile above and to the left over
    ``int(tile·factor·overlap)`` pixels, and cropped to ``tile·factor·(1-overlap)`` pixels. Tiles of one
    shape are decoded one after another (:func:`map_in_order`). ``z (N, h, w, C)``."""
    stride = int(tile * (1 - overlap))
    sample = tile * factor
    extent = int(sample * overlap)
    keep = sample - extent
    if stride < 1 or stride * factor != keep:
        raise ValueError(f"tile {tile} with overlap {overlap}: the tiles advance {stride} latent pixels but keep "
                         f"{keep / factor:g}; choose a tile for which tile * (1 - overlap) is a whole number "
                         f"(a multiple of 4 for overlap 0.25)")
    rows, cols = range(0, z.shape[1], stride), range(0, z.shape[2], stride)
    tiles = map_in_order(decode_fn, [z[:, i : i + tile, j : j + tile] for i in rows for j in cols])
    grid = [tiles[r * len(cols) : (r + 1) * len(cols)] for r in range(len(rows))]
    out_rows = []
    for r in range(len(rows)):
        for c in range(len(cols)):
            t = grid[r][c]
            if r > 0:
                t = _blend(grid[r - 1][c], t, extent, axis=1)
            if c > 0:
                t = _blend(grid[r][c - 1], t, extent, axis=2)
            grid[r][c] = t
        out_rows.append(jnp.concatenate([t[:, :keep, :keep] for t in grid[r]], axis=2))
    return jnp.concatenate(out_rows, axis=1)


def unwrap(params: Any) -> Any:
    """The params tree, with or without the ``{"params": ...}`` wrapper of ``module.apply``."""
    return params["params"] if isinstance(params, Mapping) and set(params) == {"params"} else params


def resolve_tile(config: AutoencoderKLConfig, tile: int | bool | None) -> int | None:
    """``tile`` option → tile side in latent pixels (``True``: diffusers' default; ``None``/``False``: none)."""
    if tile is None or tile is False:
        return None
    size = config.default_tile if tile is True else int(tile)
    if size < 1:
        raise ValueError(f"tile must be a positive number of latent pixels (or True/None), got {tile}")
    return size


def decode(model: AutoencoderKL, params: Any, z: Array, *, tile: int | bool | None = None,
           overlap: float = TILE_OVERLAP, batch_size: int | None = None) -> Array:
    """Decode latents ``z (..., h, w, C_lat)`` (already divided by ``scaling_factor``) to pixels
    ``(..., 8h, 8w, 3)``; the leading axes (batch, frames) are decoded as independent images.

    ``batch_size``: images per step (``lax.map`` over micro-batches; ``None`` = all at once; Open-Sora's
    ``micro_batch_size`` is 4, diffusers' ``enable_slicing()`` is 1). ``tile``: latent pixels per tile side
    (``True`` = diffusers' ``sample_size / 8``); images larger than a tile are decoded in overlapping tiles
    (:func:`tiled`). Tiling changes the result slightly (GroupNorm statistics and attention become
    per-tile), exactly as in diffusers. Jittable with ``model`` and the options bound."""
    lead, (h, w, c) = z.shape[:-3], z.shape[-3:]
    size = resolve_tile(model.config, tile)
    params = unwrap(params)

    def run(zb: Array) -> Array:
        return model.apply({"params": params}, zb, method="decode")

    def one_batch(zb: Array) -> Array:
        if size is None or (h <= size and w <= size):
            return run(zb)
        return tiled(run, zb, size, model.config.downsample_factor, overlap)

    out = map_batches(one_batch, z.reshape(-1, h, w, c), batch_size)
    return out.reshape(*lead, *out.shape[1:])


def decode_latents(model: AutoencoderKL, params: Any, latents: Array, **options: Any) -> Array:
    """:func:`decode` of the sampler's latents: ``latents / scaling_factor (+ shift_factor)`` as the
    diffusers / PixArt / DiT pipelines do before ``vae.decode``."""
    cfg = model.config
    z = latents / cfg.scaling_factor
    if cfg.shift_factor:
        z = z + cfg.shift_factor
    return decode(model, params, z, **options)


__all__ = [
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "GroupNorm",
    "TILE_OVERLAP",
    "VAE_NORM_EPS",
    "decode",
    "decode_latents",
    "map_batches",
    "map_in_order",
    "resolve_tile",
    "tiled",
    "unwrap",
]

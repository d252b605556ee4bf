"""Open-Sora 1.0 STDiT (``STDiT-XL/2``), channels-last Flax port.

Fixed-size video DiT: the latent size ``input_size = (T, H, W)`` is part of the configuration (the
original registers its positional tables as buffers at construction), and ``x`` must have exactly
that size. Per block (``blocks_{i}``), with adaLN-single parameters from the block's own table:

1. spatial self-attention ``attn`` within each frame on ``modulate(LN(x))``, gated by ``gate_msa``;
2. temporal self-attention ``attn_temp`` across frames on the **raw residual stream** (no LayerNorm,
   no modulation), gated by the **same** ``gate_msa``; in block 0 only, the 1-D temporal sin-cos
   table is added to its input first;
3. ungated cross-attention to the caption tokens;
4. gated MLP on ``modulate(LN(x))``.

The spatial 2-D sin-cos table uses positions ``index / space_scale`` (no base size), the temporal
table ``index / time_scale``. Output channels ``0..C_in-1`` are ε, the rest the learned variance.

Forward: ``model.apply({"params": p}, x (B,T,H,W,C), timestep (B,), y (B,L,Cc) or (B,1,L,Cc),
mask (Bm,L)) -> (B, T, H, W, C_out)`` float32 (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.layers import (
    CaptionEmbedder,
    CrossAttention,
    FinalLayer,
    Mlp,
    PatchEmbed,
    SelfAttention,
    TBlock,
    TimestepEmbedder,
    block_modulation,
    key_padding_mask,
    scale_shift_init,
    sincos_1d,
    sincos_2d,
    squeeze_caption,
    unpatchify,
)

Dtype = Any

@dataclasses.dataclass(frozen=True)
class STDiTConfig(ModelConfig):
    """Architecture hyper-parameters (names follow the original ``STDiT`` constructor)."""

    input_size: tuple[int, int, int] = (16, 64, 64)  # latent (T, H, W), fixed at construction
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 120
    pred_sigma: bool = True
    space_scale: float = 1.0  # spatial positions index / space_scale
    time_scale: float = 1.0  # temporal positions index / time_scale
    no_temporal_pos_emb: bool = False

    def __post_init__(self):
        for name in ("input_size", "patch_size"):
            v = getattr(self, name)
            if len(v) != 3:
                raise ValueError(f"STDiTConfig.{name} must have 3 entries (T, H, W), got {v}")
            object.__setattr__(self, name, tuple(int(a) for a in v))
        for a, p in zip(self.input_size, self.patch_size):
            if a % p:
                raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` after patching."""
        return tuple(a // p for a, p in zip(self.input_size, self.patch_size))  # type: ignore[return-value]



STDIT_PRESETS: dict[str, STDiTConfig] = {
    # OpenSora-v1-HQ-16x512x512.pth (the ViDiT-Q video model)
    "stdit-xl-2-16x512x512": STDiTConfig(input_size=(16, 64, 64), space_scale=1.0, time_scale=1.0),
    # OpenSora-v1-16x256x256.pth / OpenSora-v1-HQ-16x256x256.pth
    "stdit-xl-2-16x256x256": STDiTConfig(input_size=(16, 32, 32), space_scale=0.5, time_scale=1.0),
    # 64-frame configuration of the Open-Sora 1.0 configs
    "stdit-xl-2-64x512x512": STDiTConfig(input_size=(64, 64, 64), space_scale=1.0, time_scale=2.0 / 3.0),
}


def stdit_spatial_pos_embed(hidden: int, grid_h: int, grid_w: int, space_scale: float) -> np.ndarray:
    """Open-Sora 1.0 spatial table ``(grid_h·grid_w, hidden)``: positions ``index / space_scale``
    (float32 positions, float64 sin-cos, as the original numpy code)."""
    pos_h = np.arange(grid_h, dtype=np.float32) / np.float32(space_scale)
    pos_w = np.arange(grid_w, dtype=np.float32) / np.float32(space_scale)
    return sincos_2d(hidden, grid_h, grid_w, pos_h.astype(np.float64), pos_w.astype(np.float64))


def stdit_temporal_pos_embed(hidden: int, num_frames: int, time_scale: float) -> np.ndarray:
    """Open-Sora 1.0 temporal table ``(num_frames, hidden)``: positions ``index / time_scale``."""
    return sincos_1d(hidden, np.arange(num_frames, dtype=np.float64) / time_scale)


class STDiTBlock(nn.Module):
    """One STDiT block: spatial attention, un-normalised temporal attention (same gate), cross
    attention, MLP (see the module docstring). ``x`` is ``(B, T·S, C)``, frame-major."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float
    num_frames: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y, key_mask, t0, temporal_pos=None):
        c = self.hidden_size
        b = x.shape[0]
        nt = self.num_frames
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        table = self.param("scale_shift_table", scale_shift_init(6), (6, c), self.param_dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block_modulation(table, t0, x.dtype)

        # gated residual adds through the Dense seam (x + gate * proj(...), fused by quantized records)
        # and LayerNorm + adaLN modulate of attn/qkv's and mlp/fc1's input (prenorm=, the Dense seam's)
        x = SelfAttention(self.num_heads, name="attn", **kw)(x, nt, residual=x, gate=gate_msa,
                                                             prenorm=(shift_msa, scale_msa))

        h = x  # raw residual stream
        if temporal_pos is not None:  # (T, C) added to every position of each frame
            h = (h.reshape(b, nt, -1, c) + temporal_pos[None, :, None].astype(h.dtype)).reshape(h.shape)
        x = SelfAttention(self.num_heads, temporal=True, name="attn_temp", **kw)(h, nt, residual=x, gate=gate_msa)

        x = CrossAttention(self.num_heads, name="cross_attn", **kw)(x, y, key_mask, residual=x)
        return Mlp(int(c * self.mlp_ratio), c, name="mlp", **kw)(x, residual=x, gate=gate_mlp,
                                                                 prenorm=(shift_mlp, scale_mlp))


class STDiT(nn.Module):
    """Open-Sora 1.0 STDiT (channels-last video)."""

    config: STDiTConfig
    dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timestep, y, mask=None, **unused):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = cfg.hidden_size
        want = (*cfg.input_size, cfg.in_channels)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"STDiT was built for latents of size (T, H, W, C) = {want} (config input_size); "
                f"got x of shape {tuple(x.shape)}, expected (B, {', '.join(map(str, want))})"
            )
        b = x.shape[0]
        gt, gh, gw = cfg.grid

        tokens, grid = PatchEmbed(c, cfg.patch_size, name="x_embedder", **kw)(x.astype(self.dtype))
        pos = stdit_spatial_pos_embed(c, gh, gw, cfg.space_scale)  # same table for every frame
        tokens = (tokens.reshape(b, gt, gh * gw, c) + jnp.asarray(pos, self.dtype)[None, None]).reshape(b, -1, c)
        tpe = None
        if not cfg.no_temporal_pos_emb:
            tpe = jnp.asarray(stdit_temporal_pos_embed(c, gt, cfg.time_scale), self.dtype)

        t = TimestepEmbedder(c, name="t_embedder", **kw)(jnp.broadcast_to(timestep, (b,)))
        t0 = TBlock(c, name="t_block", **kw)(t)

        y = squeeze_caption(y)
        key_mask = key_padding_mask(mask, b, y.shape[1])
        y = CaptionEmbedder(c, cfg.caption_channels, cfg.model_max_length, name="y_embedder", **kw)(
            y.astype(self.dtype)
        )

        for i in range(cfg.depth):
            tokens = STDiTBlock(c, cfg.num_heads, cfg.mlp_ratio, gt, name=f"blocks_{i}", **kw)(
                tokens, y, key_mask, t0, tpe if i == 0 else None
            )
        out = FinalLayer(math.prod(cfg.patch_size) * cfg.out_channels, name="final_layer", **kw)(tokens, t)
        return unpatchify(out, grid, cfg.patch_size, cfg.out_channels).astype(jnp.float32)

    def init_inputs(self, batch: int = 1) -> dict:
        """Shape-only example inputs for ``jax.eval_shape(model.init, ...)`` (and smoke tests)."""
        cfg = self.config
        return dict(
            x=jnp.zeros((batch, *cfg.input_size, cfg.in_channels), jnp.float32),
            timestep=jnp.zeros((batch,), jnp.float32),
            y=jnp.zeros((batch, cfg.model_max_length, cfg.caption_channels), jnp.float32),
            mask=jnp.ones((batch, cfg.model_max_length), jnp.int32),
        )


__all__ = [
    "STDiT",
    "STDiTBlock",
    "STDiTConfig",
    "STDIT_PRESETS",
    "stdit_spatial_pos_embed",
    "stdit_temporal_pos_embed",
]

"""PixArt-α and PixArt-Σ (original ``PixArt``/``PixArtMS`` and diffusers ``PixArtTransformer2DModel``).

One Flax module serves all three checkpoint families; they differ only in configuration:

* α-256 / α-512: fixed square size (the table is recomputed anyway, equal at the trained size),
  ``pe_interpolation`` 1, no micro-conditions, 120 caption tokens.
* α-1024-MS: ``pe_interpolation`` 2 (``lewei_scale``), micro-conditions (``img_hw``, ``aspect_ratio``).
* Σ-1024-MS: ``pe_interpolation`` 2, no micro-conditions, 300 caption tokens, null caption = T5("").

Forward: ``model.apply({"params": p}, x (B,H,W,C), timestep (B,), y (B,L,Cc), mask (Bm,L), img_hw=...,
aspect_ratio=...) -> (B, H, W, C_out)`` float32 (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.config import ModelConfig
from models.layers import (
    CaptionEmbedder,
    FinalLayer,
    PatchEmbed,
    PixArtBlock,
    SizeEmbedder,
    TBlock,
    TimestepEmbedder,
    broadcast_rows,
    key_padding_mask,
    pixart_pos_embed,
    squeeze_caption,
    unpatchify,
)

Dtype = Any


@dataclasses.dataclass(frozen=True)
class PixArtConfig(ModelConfig):
    """Architecture hyper-parameters (names follow the original ``PixArtMS`` constructor)."""

    input_size: int = 128  # latent side at construction; sets the positional ``base_size``
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 120
    pred_sigma: bool = True
    pe_interpolation: float = 2.0  # α: lewei_scale, Σ: pe_interpolation, diffusers: interpolation_scale
    micro_condition: bool = True  # α-MS size/aspect-ratio embedders
    qk_norm: bool = False  # Σ option (affine LayerNorm over the full width on q, k)
    null_caption: str = "learned"  # "learned" (y_embedding) or "empty-prompt" (T5(""), Σ / diffusers)
    family: str = "pixart-alpha"

    @property
    def base_size(self) -> float:
        return self.input_size // self.patch_size


PIXART_PRESETS: dict[str, PixArtConfig] = {
    "pixart-alpha-256": PixArtConfig(input_size=32, pe_interpolation=1.0, micro_condition=False),
    "pixart-alpha-512": PixArtConfig(input_size=64, pe_interpolation=1.0, micro_condition=False),
    "pixart-alpha-1024-ms": PixArtConfig(input_size=128, pe_interpolation=2.0, micro_condition=True),
    "pixart-sigma-1024-ms": PixArtConfig(
        input_size=128,
        pe_interpolation=2.0,
        micro_condition=False,
        model_max_length=300,
        null_caption="empty-prompt",
        family="pixart-sigma",
    ),
}


class PixArt(nn.Module):
    """PixArt-α/Σ diffusion transformer (channels-last)."""

    config: PixArtConfig
    dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timestep, y, mask=None, img_hw=None, aspect_ratio=None, **unused):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = cfg.hidden_size
        b = x.shape[0]
        p = cfg.patch_size
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"PixArt expects x (B, H, W, {cfg.in_channels}), got {x.shape}")
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"latent H, W must be multiples of the patch size {p}, got {x.shape[1:3]}")

        tokens, grid = PatchEmbed(c, (p, p), name="x_embedder", **kw)(x.astype(self.dtype))
        pos = pixart_pos_embed(c, grid[0], grid[1], cfg.base_size, cfg.pe_interpolation)
        tokens = tokens + jnp.asarray(pos, self.dtype)[None]

        t = TimestepEmbedder(c, name="t_embedder", **kw)(jnp.broadcast_to(timestep, (b,)))
        if cfg.micro_condition:
            if img_hw is None or aspect_ratio is None:
                raise ValueError("this PixArt-α-MS model needs img_hw (B, 2) and aspect_ratio (B, 1)")
            csize = SizeEmbedder(c // 3, name="csize_embedder", **kw)(broadcast_rows(img_hw, b))
            ar = SizeEmbedder(c // 3, name="ar_embedder", **kw)(broadcast_rows(aspect_ratio, b))
            t = t + jnp.concatenate([csize, ar], axis=-1).astype(t.dtype)
        t0 = TBlock(c, name="t_block", **kw)(t)

        y = squeeze_caption(y)
        key_mask = key_padding_mask(mask, b, y.shape[1])
        y = CaptionEmbedder(c, cfg.caption_channels, cfg.model_max_length, name="y_embedder", **kw)(
            y.astype(self.dtype)
        )

        qk = "layernorm" if cfg.qk_norm else None
        for i in range(cfg.depth):
            tokens = PixArtBlock(c, cfg.num_heads, cfg.mlp_ratio, qk_norm=qk, name=f"blocks_{i}", **kw)(
                tokens, y, key_mask, t0
            )
        out = FinalLayer(p * p * cfg.out_channels, name="final_layer", **kw)(tokens, t)
        return unpatchify(out, grid, (p, p), cfg.out_channels).astype(jnp.float32)

    def init_inputs(self, batch: int = 1, height: int | None = None, width: int | None = None) -> dict:
        """Shape-only example inputs for ``jax.eval_shape(model.init, ...)`` (and smoke tests)."""
        cfg = self.config
        hh = height or cfg.input_size
        ww = width or cfg.input_size
        inputs = dict(
            x=jnp.zeros((batch, hh, ww, cfg.in_channels), jnp.float32),
            timestep=jnp.zeros((batch,), jnp.float32),
            y=jnp.zeros((batch, cfg.model_max_length, cfg.caption_channels), jnp.float32),
            mask=jnp.ones((batch, cfg.model_max_length), jnp.int32),
        )
        if cfg.micro_condition:
            inputs["img_hw"] = jnp.full((batch, 2), hh * 8.0, jnp.float32)
            inputs["aspect_ratio"] = jnp.full((batch, 1), hh / ww, jnp.float32)
        return inputs


__all__ = ["PixArt", "PixArtBlock", "PixArtConfig", "PIXART_PRESETS"]

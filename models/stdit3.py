"""Open-Sora 1.2 STDiT3 (``STDiT3-XL/2``, ``hpcai-tech/OpenSora-STDiT-v3``), channels-last Flax port.

Dynamic-size video DiT. Differences from Open-Sora 1.0 STDiT (``models/stdit.py``):

* separate full PixArt blocks ``spatial_blocks_{i}`` (attention within a frame) and
  ``temporal_blocks_{i}`` (attention across frames, with its own LN + modulation + gate),
  applied alternately — :class:`models.layers.PixArtBlock` with ``temporal`` off / on;
* per-head RMSNorm qk-norm (``qk_norm``) and interleaved RoPE over frame positions ``0..T-1`` in
  the temporal attention; no temporal sin-cos table;
* the 2-D sin-cos table is recomputed per call for the token grid ``gh × gw`` with
  ``base_size = round(sqrt(gh·gw))`` and positions ``arange(g) / scale · (base_size / g)``, where
  ``scale = sqrt(height[0]·width[0]) / input_sq_size`` (pixel sizes; only row 0 is read, as in the
  original), computed in float32 from the traced ``height``/``width``;
* ``fps_embedder(fps)`` is added to the timestep embedding (the sum also feeds the final layer);
* latent H/W (and T) that are not multiples of the patch are zero-padded at the end and the output
  is cropped back;
* optional ``x_mask (B, T)``: frames where it is False are conditioned as clean frames (adaLN
  parameters of timestep 0, also in the final layer) — the original's image/video-conditioning path.

Output channels ``0..C_in-1`` are the rectified-flow velocity.

Forward: ``model.apply({"params": p}, x (B,T,H,W,C), timestep (B,), y (B,L,Cc) or (B,1,L,Cc),
mask (Bm,L), fps=(B,), height=(B,), width=(B,), x_mask=None) -> (B, T, H, W, C_out)`` float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from models.config import COMMON_NOOP_KEYS, ModelConfig
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
    sincos_2d,
    squeeze_caption,
    unpatchify,
)

Dtype = Any

@dataclasses.dataclass(frozen=True)
class STDiT3Config(ModelConfig):
    """Architecture hyper-parameters (names follow the original ``STDiT3Config``)."""

    input_sq_size: int = 512  # pixel side at which the spatial positional scale is 1
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 300
    pred_sigma: bool = True
    qk_norm: bool = True

    def __post_init__(self):
        if len(self.patch_size) != 3:
            raise ValueError(f"STDiT3Config.patch_size must have 3 entries, got {self.patch_size}")
        object.__setattr__(self, "patch_size", tuple(int(a) for a in self.patch_size))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    NOOP_KEYS: ClassVar[frozenset] = COMMON_NOOP_KEYS | {
        "input_size",  # (None, None, None): the model is dynamic-size
        "only_train_temporal",
        "freeze_y_embedder",
        "skip_y_embedder",  # False is the only supported value (checked in from_original)
        # Hugging Face PretrainedConfig bookkeeping
        "architectures",
        "model_type",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "_name_or_path",
        "_commit_hash",
        "auto_map",
    }

    @classmethod
    def from_original(cls, d: dict, **defaults: Any) -> "STDiT3Config":
        """From ``STDiT3Config`` kwargs / an HF ``config.json`` (see :meth:`ModelConfig.from_original`)."""
        if d.get("skip_y_embedder"):
            raise NotImplementedError("STDiT3 skip_y_embedder=True (pre-projected captions) is not supported")
        return super().from_original(d, **defaults)

STDIT3_PRESETS: dict[str, STDiT3Config] = {
    "stdit3-xl-2": STDiT3Config(),  # hpcai-tech/OpenSora-STDiT-v3
}


def stdit3_pos_embed(hidden: int, grid_h: int, grid_w: int, height, width, input_sq_size: int):
    """Spatial table ``(grid_h·grid_w, hidden)`` float32 for a token grid, from the pixel sizes
    ``height``/``width`` (``(B,)`` arrays, possibly traced; only row 0 is read)."""
    base_size = round(math.sqrt(grid_h * grid_w))
    h0 = jnp.asarray(height, jnp.float32).reshape(-1)[0]
    w0 = jnp.asarray(width, jnp.float32).reshape(-1)[0]
    scale = jnp.sqrt(h0 * w0) / input_sq_size
    pos_h = jnp.arange(grid_h, dtype=jnp.float32) / scale * jnp.float32(base_size / grid_h)
    pos_w = jnp.arange(grid_w, dtype=jnp.float32) / scale * jnp.float32(base_size / grid_w)
    return sincos_2d(hidden, grid_h, grid_w, pos_h, pos_w, xp=jnp)


class STDiT3(nn.Module):
    """Open-Sora 1.2 STDiT3 (channels-last video, dynamic T/H/W)."""

    config: STDiT3Config
    dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x, timestep, y, mask=None, fps=None, height=None, width=None, x_mask=None, **unused
    ):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = cfg.hidden_size
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"STDiT3 expects x (B, T, H, W, {cfg.in_channels}), got {tuple(x.shape)}")
        missing = [n for n, v in (("fps", fps), ("height", height), ("width", width)) if v is None]
        if missing:
            raise ValueError(
                f"STDiT3 needs the keyword conditions fps, height, width ((B,) arrays); missing: {missing}"
            )
        b, frames, hx, wx = x.shape[:4]

        tokens, grid = PatchEmbed(c, cfg.patch_size, name="x_embedder", **kw)(x.astype(self.dtype))
        gt, gh, gw = grid
        pos = stdit3_pos_embed(c, gh, gw, height, width, cfg.input_sq_size).astype(self.dtype)
        tokens = (tokens.reshape(b, gt, gh * gw, c) + pos[None, None]).reshape(b, -1, c)

        t_embedder = TimestepEmbedder(c, name="t_embedder", **kw)
        t_block = TBlock(c, name="t_block", **kw)
        fps_emb = SizeEmbedder(c, name="fps_embedder", **kw)(broadcast_rows(fps, b))
        t = t_embedder(jnp.broadcast_to(timestep, (b,))) + fps_emb
        t_mlp = t_block(t)
        t_zero = t0_zero = None
        if x_mask is not None:
            x_mask = jnp.asarray(x_mask).astype(bool)
            if x_mask.ndim != 2 or x_mask.shape[1] != gt or b % x_mask.shape[0]:
                raise ValueError(f"x_mask must be (B, {gt}) (one flag per latent frame), got {x_mask.shape}")
            x_mask = jnp.tile(x_mask, (b // x_mask.shape[0], 1))
            t_zero = t_embedder(jnp.zeros((b,), jnp.float32)) + fps_emb
            t0_zero = t_block(t_zero)

        y = squeeze_caption(y)
        key_mask = key_padding_mask(mask, b, y.shape[1])
        y = CaptionEmbedder(c, cfg.caption_channels, cfg.model_max_length, name="y_embedder", **kw)(
            y.astype(self.dtype)
        )

        qk = "rms" if cfg.qk_norm else None
        block_args = dict(num_frames=gt, x_mask=x_mask, t0_zero=t0_zero)
        for i in range(cfg.depth):
            tokens = PixArtBlock(c, cfg.num_heads, cfg.mlp_ratio, qk_norm=qk, name=f"spatial_blocks_{i}", **kw)(
                tokens, y, key_mask, t_mlp, **block_args
            )
            tokens = PixArtBlock(
                c, cfg.num_heads, cfg.mlp_ratio, qk_norm=qk, temporal=True, rope=True,
                name=f"temporal_blocks_{i}", **kw,
            )(tokens, y, key_mask, t_mlp, **block_args)
        out = FinalLayer(math.prod(cfg.patch_size) * cfg.out_channels, name="final_layer", **kw)(
            tokens, t, x_mask=x_mask, t_zero=t_zero, num_frames=gt
        )
        out = unpatchify(out, grid, cfg.patch_size, cfg.out_channels)
        return out[:, :frames, :hx, :wx].astype(jnp.float32)

    def init_inputs(self, batch: int = 1, frames: int = 2, height: int = 8, width: int = 8) -> dict:
        """Example inputs (latent ``frames × height × width``) for ``jax.eval_shape(model.init, ...)``
        and smoke tests; the parameter shapes do not depend on the sizes."""
        cfg = self.config
        return dict(
            x=jnp.zeros((batch, frames, height, width, cfg.in_channels), jnp.float32),
            timestep=jnp.zeros((batch,), jnp.float32),
            y=jnp.zeros((batch, cfg.model_max_length, cfg.caption_channels), jnp.float32),
            mask=jnp.ones((batch, cfg.model_max_length), jnp.int32),
            fps=jnp.full((batch,), 24.0, jnp.float32),
            height=jnp.full((batch,), height * 8.0, jnp.float32),
            width=jnp.full((batch,), width * 8.0, jnp.float32),
        )


__all__ = ["STDiT3", "STDiT3Config", "STDIT3_PRESETS", "stdit3_pos_embed"]

"""DiT (facebookresearch/DiT ``models.py`` class ``DiT``): the class-conditional latent diffusion transformer.

Unlike the PixArt-style models of this package DiT has no caption and no adaLN-single: the condition
``c = t_embedder(t) + y_embedder(label)`` is one vector per sample, and EVERY block (and the final
layer) owns its own ``adaLN_modulation`` = SiLU → Linear(C → 6C) (final: 2C), "adaLN-Zero" (zero-
initialised in training). Blocks: ``x += gate_msa · attn(LN(x)·(1+scale_msa)+shift_msa)``,
``x += gate_mlp · mlp(LN(x)·(1+scale_mlp)+shift_mlp)`` (LayerNorm without affine, eps 1e-6; timm
attention with a fused ``qkv``; tanh-GELU MLP). The label table has ``num_classes + 1`` rows when the
model was trained with label dropout (``class_dropout_prob > 0``): the last row, label index
``num_classes``, is the NULL class that classifier-free guidance runs as the unconditional half.
``pos_embed`` is the fixed MAE 2-D sin-cos table of the ``input_size / patch_size`` grid (integer
positions, first half of the channels = column), recomputed here (stored in the released files).
DiT is fixed-size: ``x`` must be ``input_size`` square, as timm's PatchEmbed insists.

Forward: ``model.apply({"params": p}, x (B, S, S, C), timestep (B,), y (B,) int labels) ->
(B, S, S, 2C)`` float32 with ``learn_sigma``: channels ``[:C]`` ε, ``[C:]`` the learned-range variance
interpolation (see DESIGN.md "Model call convention"; ``mask`` and extras are accepted and ignored).
A label outside the table (``[0, num_classes]``, or ``[0, num_classes)`` without the null row) makes that
sample's output NaN, never a silently clamped class.

Releases: DiT-XL/2 256×256 (``input_size`` 32) and 512×512 (64), :data:`DIT_PRESETS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.layers import (
    Dense,
    Mlp,
    PatchEmbed,
    SelfAttention,
    TimestepEmbedder,
    sincos_2d,
    unpatchify,
)

Dtype = Any


@dataclasses.dataclass(frozen=True)
class DiTConfig(ModelConfig):
    """Architecture hyper-parameters (names of the original ``DiT`` constructor; ``pred_sigma`` is its
    ``learn_sigma``, ``use_cfg_embedding`` its ``class_dropout_prob > 0``: whether the label table has
    the null-class row)."""

    input_size: int = 32  # latent side (image side / 8); fixed: the model samples this size only
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    use_cfg_embedding: bool = True
    pred_sigma: bool = True

    @property
    def grid(self) -> int:
        """Tokens per side, ``input_size / patch_size``."""
        return self.input_size // self.patch_size

    @property
    def null_class(self) -> int:
        """The label index of the unconditional (null) class: ``num_classes``."""
        return self.num_classes


DIT_PRESETS: dict[str, DiTConfig] = {
    "dit-xl-2-256": DiTConfig(input_size=32),
    "dit-xl-2-512": DiTConfig(input_size=64),
}


def dit_pos_embed(embed_dim: int, grid: int) -> np.ndarray:
    """DiT's fixed table for a ``grid × grid`` token grid: MAE 2-D sin-cos of the integer positions,
    ``(grid², embed_dim)`` float64."""
    pos = np.arange(grid, dtype=np.float64)
    return sincos_2d(embed_dim, grid, grid, pos, pos)


class Embedding(nn.Module):
    """``torch.nn.Embedding``: param ``weight (num_embeddings, features)``; an index outside the table
    gives a NaN row (``jnp.take(mode="fill")``), not a clamped one."""

    num_embeddings: int
    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, idx: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.normal(0.02), (self.num_embeddings, self.features),
                            self.param_dtype)
        return jnp.take(weight, jnp.asarray(idx, jnp.int32), axis=0, mode="fill", fill_value=jnp.nan)


class LabelEmbedder(nn.Module):
    """``y_embedder``: the label table ``embedding_table`` (``num_classes`` rows, + the null class)."""

    rows: int
    hidden_size: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        return Embedding(self.rows, self.hidden_size, param_dtype=self.param_dtype, name="embedding_table")(y)


class AdaLNModulation(nn.Module):
    """DiT's per-block ``adaLN_modulation`` = SiLU → Linear(C → ``chunks``·C) (the Dense is named ``1``
    like index 1 of the original ``nn.Sequential``); returns ``chunks`` tensors ``(B, 1, C)``."""

    hidden_size: int
    chunks: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c: jax.Array) -> list[jax.Array]:
        dense = Dense(self.chunks * self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="1")
        mod = dense(nn.silu(c))
        mod = mod.reshape(mod.shape[0], self.chunks, self.hidden_size)
        return [mod[:, i : i + 1] for i in range(self.chunks)]


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated self-attention and gated MLP, modulated by this block's own
    ``adaLN_modulation(c)``."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            m.astype(x.dtype) for m in AdaLNModulation(self.hidden_size, 6, name="adaLN_modulation", **kw)(c))
        # x + gate * layer(LN(x)·(1+scale)+shift): the gated residual add and the LayerNorm + modulate of
        # the layer's input (prenorm=) handed to the Dense seam (a record may fuse them)
        x = SelfAttention(self.num_heads, name="attn", **kw)(x, residual=x, gate=gate_msa,
                                                             prenorm=(shift_msa, scale_msa))
        return Mlp(int(self.hidden_size * self.mlp_ratio), self.hidden_size, name="mlp", **kw)(
            x, residual=x, gate=gate_mlp, prenorm=(shift_mlp, scale_mlp))


class DiTFinalLayer(nn.Module):
    """``linear(LN(x)·(1+scale)+shift)`` with ``shift, scale = adaLN_modulation(c)``."""

    out_features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shift, scale = (m.astype(x.dtype) for m in AdaLNModulation(x.shape[-1], 2, name="adaLN_modulation", **kw)(c))
        return Dense(self.out_features, name="linear", **kw)(x, prenorm=(shift, scale))


class DiT(nn.Module):
    """facebookresearch/DiT ``DiT`` (channels-last)."""

    config: DiTConfig
    dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, timestep, y, mask=None, **unused):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c, p, s = cfg.hidden_size, cfg.patch_size, cfg.input_size
        if x.ndim != 4 or x.shape[1:] != (s, s, cfg.in_channels):
            raise ValueError(f"DiT expects x (B, {s}, {s}, {cfg.in_channels}) (a fixed-size model), got {x.shape}")
        b = x.shape[0]
        y = jnp.asarray(y)
        if y.shape != (b,) or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"DiT expects y = ({b},) integer class labels (null class {cfg.null_class}), "
                             f"got {y.dtype} {y.shape}")

        tokens, grid = PatchEmbed(c, (p, p), name="x_embedder", **kw)(x.astype(self.dtype))
        tokens = tokens + jnp.asarray(dit_pos_embed(c, grid[0]), self.dtype)[None]
        t = TimestepEmbedder(c, name="t_embedder", **kw)(jnp.broadcast_to(timestep, (b,)))
        rows = cfg.num_classes + int(cfg.use_cfg_embedding)
        cond = t + LabelEmbedder(rows, c, param_dtype=self.param_dtype, name="y_embedder")(y).astype(t.dtype)
        for i in range(cfg.depth):
            tokens = DiTBlock(c, cfg.num_heads, cfg.mlp_ratio, name=f"blocks_{i}", **kw)(tokens, cond)
        out = DiTFinalLayer(p * p * cfg.out_channels, name="final_layer", **kw)(tokens, cond)
        return unpatchify(out, grid, (p, p), cfg.out_channels).astype(jnp.float32)

    def init_inputs(self, batch: int = 1) -> dict:
        """Shape-only example inputs for ``jax.eval_shape(model.init, ...)`` (and smoke tests)."""
        cfg = self.config
        return dict(
            x=jnp.zeros((batch, cfg.input_size, cfg.input_size, cfg.in_channels), jnp.float32),
            timestep=jnp.zeros((batch,), jnp.float32),
            y=jnp.zeros((batch,), jnp.int32),
        )


__all__ = ["DIT_PRESETS", "DiT", "DiTBlock", "DiTConfig", "DiTFinalLayer", "Embedding", "LabelEmbedder",
           "dit_pos_embed"]

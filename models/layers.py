"""Building blocks shared by every PixArt-style diffusion transformer in this package.

PixArt-α/Σ, Open-Sora STDiT (1.0) and STDiT3 (1.2) are all "PixArt-style" DiTs: adaLN-single
conditioning with a learned per-block ``scale_shift_table``, cross-attention to caption tokens and a
tanh-GELU MLP. Everything they share lives here, once:

* :class:`Dense` — the ONE linear layer of the package. It is also the quantization seam: when its
  ``kernel`` leaf is a quantized record (anything with a ``quantized_dense`` method) the record
  computes the layer instead of the float matmul (see DESIGN.md).
* :class:`SelfAttention` / :class:`CrossAttention` / :class:`Mlp` — the block sub-layers; attention
  itself goes through the attention seam (:func:`models.attention.attend`).
* :class:`TimestepEmbedder`, :class:`SizeEmbedder`, :class:`CaptionEmbedder`, :class:`FinalLayer`.
* :class:`PixArtBlock` — the adaLN-single DiT block of PixArt and of STDiT3's spatial / temporal blocks.
* :func:`layer_norm`, :func:`modulate`, :func:`prenorm_input` (their composition, a Dense's ``prenorm=``),
  :func:`sincos_1d`, :func:`sincos_2d`, :func:`apply_rope`.

Flax module names mirror the PyTorch state-dict names of the original code (``blocks_3/attn/qkv``
↔ ``blocks.3.attn.qkv``) so that checkpoint conversion and quantization rules read naturally.
Layout is channels-last throughout.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.attention import RECORD_KEY, attend

Dtype = Any
Array = jax.Array

LN_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Dense: the single linear layer (float path + quantized seam)
# --------------------------------------------------------------------------------------------


def _torch_linear_init(key, shape, dtype=jnp.float32):
    """Xavier-uniform, like the original DiT initialisation (irrelevant once weights are loaded)."""
    fan_in, fan_out = shape[0], shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


@functools.lru_cache(maxsize=None)
def _record_accepts(record_type: type, keyword: str) -> bool:
    """Whether a record's ``quantized_dense`` accepts ``keyword=`` (``activation``, ``splits``);
    when it does not, Dense applies the activation / splits the output itself."""
    return keyword in inspect.signature(record_type.quantized_dense).parameters


class Dense(nn.Module):
    """``y = x @ kernel + bias`` with ``kernel`` stored ``(in, out)`` (Flax convention).

    If the ``kernel`` leaf of the params tree is a quantized record (an object with a
    ``quantized_dense(x, bias, dtype[, activation][, splits][, residual, gate])`` method, e.g.
    ``vidq_jax.quant.QuantizedWeight``), the record computes the layer instead; the module definition is
    shared by the float and quantized twins. Records that accept ``activation`` get its name (and may
    fuse it into their kernel); records that accept ``splits`` return the output as a tuple of column
    blocks; records that accept ``residual`` get the call's ``residual=`` / ``gate=`` (and may fuse the
    gated residual add into their GEMM epilogue).

    ``residual`` / ``gate`` (call arguments): the output is :func:`add_residual` ``(y, residual, gate)``
    = ``residual + gate * y`` — a DiT block's ``x + gate_msa * attn(x)`` handed to the layer that
    produces ``attn(x)``; the float path computes exactly that expression in XLA.

    ``prenorm=(shift, scale)`` (call argument): the layer's input is :func:`prenorm_input` ``(x, prenorm)``
    = ``modulate(layer_norm(x), shift, scale)`` — a DiT block's LayerNorm + adaLN modulation handed to the
    layer that consumes it (qkv, fc1). Records that accept ``prenorm`` get the raw ``x`` and may fuse the
    LayerNorm and modulation into their quantizer; for all others (and the float path) the Dense computes
    the input itself, exactly as the blocks wrote it. Interceptors read the input with :func:`dense_input`.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None  # compute dtype; None = promote(input, params)
    param_dtype: Dtype = jnp.float32
    # name of an activation applied to the output (a key of ACTIVATIONS); a quantized record gets
    # the name (``quantized_dense(..., activation=name)``) and may fuse it into its kernel
    activation: str | None = None
    # > 1: the output is returned as that many equal column blocks (fused qkv -> q, k, v); a
    # quantized record gets ``splits=`` and may compute each block separately (one quantized x,
    # one GEMM per block), so that no strided slice of a wide output has to be copied
    splits: int = 1

    @nn.compact
    def __call__(self, x: Array, *, residual: Array | None = None, gate: Array | None = None,
                 prenorm: tuple[Array, Array] | None = None) -> Array | tuple[Array, ...]:
        if self.features % self.splits:
            raise ValueError(f"{self.features} features do not split into {self.splits} blocks")
        if self.splits > 1 and (residual is not None or gate is not None):
            raise ValueError("Dense: residual/gate apply to one output, not to splits > 1 column blocks")
        if self.has_variable("params", "kernel"):
            record = self.get_variable("params", "kernel")
            if hasattr(record, "quantized_dense"):  # read before self.param: its shape check expects (K, N)
                return self._quantized(record, x, residual, gate, prenorm)
        x = prenorm_input(x, prenorm)
        kernel = self.param("kernel", _torch_linear_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if bias is not None:
            y = y + bias.astype(dtype)
        return add_residual(split_columns(activate(self.activation, y), self.splits), residual, gate)

    def _quantized(self, record, x: Array, residual: Array | None = None, gate: Array | None = None,
                   prenorm: tuple[Array, Array] | None = None) -> Array | tuple[Array, ...]:
        bias = self.get_variable("params", "bias") if self.use_bias else None
        kw = {}
        dtype = self.dtype or prenorm_dtype(x, prenorm)
        if prenorm is not None and _record_accepts(type(record), "prenorm"):
            kw["prenorm"] = prenorm  # the record gets the raw x (and may fuse LayerNorm + modulate)
        else:
            x = prenorm_input(x, prenorm)
        fuse_act = self.activation is not None and _record_accepts(type(record), "activation")
        if fuse_act:
            kw["activation"] = self.activation
        split_by_record = self.splits > 1 and _record_accepts(type(record), "splits")
        if split_by_record:
            kw["splits"] = self.splits
        fuse_res = (residual is not None or gate is not None) and _record_accepts(type(record), "residual")
        if fuse_res:
            kw["residual"], kw["gate"] = residual, gate
        y = record.quantized_dense(x, bias, dtype, **kw)
        if self.activation is not None and not fuse_act:
            y = jax.tree_util.tree_map(lambda a: activate(self.activation, a), y)
        y = tuple(y) if split_by_record else split_columns(y, self.splits)
        return y if fuse_res else add_residual(y, residual, gate)


def add_residual(y: Array, residual: Array | None = None, gate: Array | None = None) -> Array:
    """``residual + gate * y`` (either term optional; ``y`` itself without both): THE gated residual
    add of the Dense seam, the expression the DiT blocks wrote after the layer."""
    if gate is not None:
        y = gate * y
    return y if residual is None else residual + y


def prenorm_input(x: Array, prenorm: tuple | None) -> Array:
    """The input of a Dense called with ``prenorm=(shift, scale[, eps])``: ``modulate(layer_norm(x, eps),
    shift, scale)`` (``eps`` default :data:`LN_EPS`, every family's), ``x`` itself for ``prenorm=None``.

    ``x (..., C)`` is taken as ``G`` equal slabs of consecutive rows of its ``(M, C)`` flattening, where
    ``shift`` / ``scale`` hold ``G·C`` elements: slab ``g`` is modulated by row ``g`` of their ``(G, C)``
    form — ``G = B`` for a DiT block's ``(B, 1, C)`` adaLN parameters on ``x (B, N, C)``, ``G = B·T`` for
    per-frame ``(B, T, 1, C)`` parameters on frame-major tokens ``(B, T·S, C)``."""
    if prenorm is None:
        return x
    shift, scale, *eps = prenorm
    c = x.shape[-1]
    g = prenorm_groups(x.shape, shift, scale)
    slabs = x.reshape(g, -1, c)
    return modulate(layer_norm(slabs, *eps), shift.reshape(g, 1, c), scale.reshape(g, 1, c)).reshape(x.shape)


def prenorm_groups(x_shape: tuple[int, ...], shift: Array, scale: Array) -> int:
    """``G`` of :func:`prenorm_input` for ``x`` of ``x_shape`` (ValueError naming the shapes when they do not fit)."""
    c, rows = x_shape[-1], math.prod(x_shape[:-1])
    g = shift.size // c
    if shift.size != scale.size or shift.size % c or not g or rows % g:
        raise ValueError(f"prenorm shift {shift.shape} / scale {scale.shape} must both hold G*{c} elements, "
                         f"G dividing the {rows} rows of x {tuple(x_shape)}")
    return g


def prenorm_dtype(x: Array, prenorm: tuple | None):
    """The dtype of :func:`prenorm_input` ``(x, prenorm)`` (without computing it)."""
    return x.dtype if prenorm is None else jnp.result_type(x.dtype, prenorm[0].dtype, prenorm[1].dtype)


def dense_input(args: tuple, kwargs: dict) -> Array:
    """The input a ``Dense.__call__(*args, **kwargs)`` computes with — what a method interceptor
    (calibration statistics, distillation) sees as the layer's input: ``x``, or
    :func:`prenorm_input` of it when the call carries ``prenorm=``."""
    x = args[0] if args else kwargs["x"]
    return prenorm_input(x, kwargs.get("prenorm"))


def split_columns(y: Array, splits: int) -> Array | tuple[Array, ...]:
    """``y`` itself (``splits == 1``), or its ``splits`` equal blocks along the last axis (fused qkv -> q, k, v)."""
    return y if splits == 1 else tuple(jnp.split(y, splits, axis=-1))


# --------------------------------------------------------------------------------------------
# Small functional pieces
# --------------------------------------------------------------------------------------------


def layer_norm(x: Array, eps: float = LN_EPS) -> Array:
    """LayerNorm without affine parameters, statistics in float32, result in ``x.dtype``."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation ``x * (1 + scale) + shift`` (PixArt's ``t2i_modulate``)."""
    return x * (1 + scale) + shift


def gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


# activations a Dense can apply to its output (by name, so that quantized records can fuse them):
# THE registry of the package; quantized records and backends apply them through activate()
ACTIVATIONS = {"gelu_tanh": gelu_tanh}


def activate(name: str | None, y: Array) -> Array:
    """``ACTIVATIONS[name](y)`` (identity for ``None``; ValueError naming the known activations)."""
    if name is None:
        return y
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](y)


def timestep_sinusoid(t: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
    """GLIDE timestep features ``[cos(t f), sin(t f)]`` with ``f_i = exp(-ln(P) i / (dim/2))``, float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def sincos_1d(embed_dim: int, pos, xp=np):
    """MAE 1-D table ``[sin(p ω_k), cos(p ω_k)]``, ``ω_k = 10000^(-k/(D/2))``; ``pos`` any shape.

    ``xp`` is ``numpy`` (float64, static grids) or ``jax.numpy`` (traced scales).
    """
    assert embed_dim % 2 == 0, embed_dim
    dt = np.float64 if xp is np else jnp.float32
    omega = xp.arange(embed_dim // 2, dtype=dt) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = xp.reshape(xp.asarray(pos, dt), (-1,))[:, None] * omega[None]
    return xp.concatenate([xp.sin(out), xp.cos(out)], axis=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, pos_h, pos_w, xp=np):
    """2-D table for a row-major ``grid_h × grid_w`` token grid, shape ``(grid_h*grid_w, D)``.

    ``pos_h``/``pos_w`` are the per-axis positions (length ``grid_h``/``grid_w``). The first ``D/2``
    channels encode the column (w) position, the last ``D/2`` the row (h) position.
    """
    assert embed_dim % 2 == 0, embed_dim
    ww, hh = xp.meshgrid(pos_w, pos_h)  # (grid_h, grid_w) each
    emb_w = sincos_1d(embed_dim // 2, ww, xp)
    emb_h = sincos_1d(embed_dim // 2, hh, xp)
    return xp.concatenate([emb_w, emb_h], axis=1)


def pixart_pos_embed(embed_dim: int, grid_h: int, grid_w: int, base_size: float, scale: float) -> np.ndarray:
    """PixArt / diffusers / STDiT3 positions ``arange(g) / (g / base_size) / scale`` per axis (float64)."""
    pos_h = np.arange(grid_h, dtype=np.float64) / (grid_h / base_size) / scale
    pos_w = np.arange(grid_w, dtype=np.float64) / (grid_w / base_size) / scale
    return sincos_2d(embed_dim, grid_h, grid_w, pos_h, pos_w)


def key_padding_mask(mask: Array | None, batch: int, length: int) -> Array | None:
    """Caption mask ``(B_m, L)`` (1 = valid) → boolean ``(B, L)``, tiling rows when ``B_m`` divides ``B``."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim != 2 or mask.shape[1] != length:
        raise ValueError(f"caption mask must be (B, {length}), got {mask.shape}")
    if batch % mask.shape[0]:
        raise ValueError(f"caption mask has {mask.shape[0]} rows, which does not divide batch {batch}")
    return jnp.tile(mask.astype(bool), (batch // mask.shape[0], 1))


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """Inverse frequencies ``1 / theta^(2k/head_dim)``, k < head_dim/2 (rotary-embedding-torch)."""
    return 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64)[: head_dim // 2] / head_dim)


def apply_rope(x: Array, positions: Array, theta: float = 10000.0) -> Array:
    """Interleaved-pair (GPT-J style) rotary embedding over the sequence axis 1 of ``x (B, N, ..., D)``
    (``(B, N, H, D)`` sequences or ``(B, T, S, H, D)`` frame-major video tokens, rotated along T).

    Features ``(2k, 2k+1)`` are rotated together by angle ``pos * inv_freq[k]``.
    """
    d = x.shape[-1]
    inv = jnp.asarray(rope_frequencies(d, theta), jnp.float32)
    ang = jnp.asarray(positions, jnp.float32)[:, None] * inv[None]  # (N, D/2)
    bshape = (1, ang.shape[0]) + (1,) * (x.ndim - 3) + (d,)
    cos = jnp.repeat(jnp.cos(ang), 2, axis=-1).reshape(bshape)
    sin = jnp.repeat(jnp.sin(ang), 2, axis=-1).reshape(bshape)
    xf = x.astype(jnp.float32)
    pairs = xf.reshape(*x.shape[:-1], d // 2, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (xf * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Llama-style RMSNorm over the last axis, computed in float32, cast back, times ``weight``."""

    eps: float = LN_EPS
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        return xf.astype(x.dtype) * weight.astype(x.dtype)


class AffineLayerNorm(nn.Module):
    """LayerNorm with ``weight``/``bias`` (PixArt-Σ optional qk-norm over the full width)."""

    eps: float = LN_EPS
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        weight = self.param("weight", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return layer_norm(x, self.eps) * weight.astype(x.dtype) + bias.astype(x.dtype)


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc2(gelu_tanh(fc1(x)))``."""

    hidden_features: int
    out_features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, residual: Array | None = None, gate: Array | None = None,
                 prenorm: tuple[Array, Array] | None = None) -> Array:
        """``residual`` / ``gate``: ``residual + gate * fc2(...)`` (:func:`add_residual`, by ``fc2``);
        ``prenorm``: ``fc1``'s input is :func:`prenorm_input` ``(x, prenorm)`` (the Dense seam's)."""
        x = Dense(self.hidden_features, dtype=self.dtype, param_dtype=self.param_dtype, activation="gelu_tanh",
                  name="fc1")(x, prenorm=prenorm)
        return Dense(self.out_features, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(
            x, residual=residual, gate=gate)


class SelfAttention(nn.Module):
    """Fused-``qkv`` multi-head self-attention of ``x (B, T·S, C)``, frame-major tokens of
    ``num_frames = T`` frames (images: ``T = 1``).

    ``temporal=False``: attention within each frame (over its ``S`` tokens); ``temporal=True``:
    attention across the frames of each spatial position (kind ``"temporal"`` of the attention seam,
    :mod:`models.attention`, in the tokens' own layout — the linears are per token, so no re-layout is
    needed at all).
    ``qk_norm``: ``None``, ``"rms"`` (per-head RMSNorm, STDiT3) or ``"layernorm"`` (affine LayerNorm
    over the full width before the head split, PixArt-Σ option). ``rope``: interleaved RoPE on q, k
    along the attended axis, after the norm (STDiT3 temporal blocks).
    """

    num_heads: int
    qk_norm: str | None = None
    rope: bool = False
    temporal: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, num_frames: int = 1, *, residual: Array | None = None,
                 gate: Array | None = None, prenorm: tuple[Array, Array] | None = None) -> Array:
        """``residual`` / ``gate``: ``residual + gate * proj(...)`` (:func:`add_residual`, by ``proj``);
        ``prenorm``: ``qkv``'s input is :func:`prenorm_input` ``(x, prenorm)`` (the Dense seam's)."""
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        if n % num_frames:
            raise ValueError(f"{n} tokens do not split into {num_frames} frames")
        # attended axis 1: (B·T, S, H, D) within frames, (B, T, S, H, D) across frames
        grouped = (b, num_frames, n // num_frames, h, d) if self.temporal else (b * num_frames, n // num_frames, h, d)
        q, k, v = Dense(3 * c, dtype=self.dtype, param_dtype=self.param_dtype, splits=3, name="qkv")(x, prenorm=prenorm)
        if self.qk_norm == "layernorm":
            q = AffineLayerNorm(param_dtype=self.param_dtype, name="q_norm")(q)
            k = AffineLayerNorm(param_dtype=self.param_dtype, name="k_norm")(k)
        q, k, v = (t.reshape(grouped) for t in (q, k, v))
        if self.qk_norm == "rms":
            q = RMSNorm(param_dtype=self.param_dtype, name="q_norm")(q)
            k = RMSNorm(param_dtype=self.param_dtype, name="k_norm")(k)
        elif self.qk_norm not in (None, "layernorm"):
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}")
        if self.rope:
            pos = jnp.arange(grouped[1])
            q, k = apply_rope(q, pos), apply_rope(k, pos)
        out = attend(q, k, v, kind="temporal" if self.temporal else "self", record=_attention_record(self))
        out = out.reshape(b, n, c)
        return Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out, residual=residual, gate=gate)


def _attention_record(module: nn.Module) -> Any:
    """The per-layer attention record of an attention module (params leaf ``RECORD_KEY``), or None."""
    return module.get_variable("params", RECORD_KEY) if module.has_variable("params", RECORD_KEY) else None


class CrossAttention(nn.Module):
    """Multi-head cross-attention of ``x (B, N, C)`` to caption tokens ``y (B, L, C)``.

    ``q_linear``, fused ``kv_linear`` (k = first C outputs, v = second C), ``proj``; padded caption
    tokens (``key_mask`` False) get exactly zero weight, matching the originals' token packing.
    """

    num_heads: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array, key_mask: Array | None, *, residual: Array | None = None,
                 gate: Array | None = None) -> Array:
        """``residual`` / ``gate``: ``residual + gate * proj(...)`` (:func:`add_residual`, by ``proj``)."""
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        q = Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="q_linear")(x)
        k, v = Dense(2 * c, dtype=self.dtype, param_dtype=self.param_dtype, splits=2, name="kv_linear")(y)
        q = q.reshape(b, n, h, d)
        k = k.reshape(b, y.shape[1], h, d)
        v = v.reshape(b, y.shape[1], h, d)
        out = attend(q, k, v, key_mask, kind="cross", record=_attention_record(self)).reshape(b, n, c)
        return Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out, residual=residual, gate=gate)


class TimestepEmbedder(nn.Module):
    """256-d ``[cos, sin]`` sinusoid of a scalar per row → ``mlp_0`` → SiLU → ``mlp_2``."""

    hidden_size: int
    frequency_embedding_size: int = 256
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:
        f = timestep_sinusoid(t, self.frequency_embedding_size)
        f = f.astype(self.dtype or self.param_dtype)
        x = Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_0")(f)
        return Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_2")(nn.silu(x))


class SizeEmbedder(TimestepEmbedder):
    """Embeds each column of ``s (B, k)`` (or ``(B,)``) like a timestep and concatenates: ``(B, k*hidden)``."""

    @nn.compact
    def __call__(self, s: Array) -> Array:  # type: ignore[override]
        s = jnp.asarray(s, jnp.float32)
        if s.ndim == 1:
            s = s[:, None]
        b, k = s.shape
        emb = super().__call__(s.reshape(b * k))
        return emb.reshape(b, k * self.hidden_size)


class CaptionEmbedder(nn.Module):
    """Caption projection ``y_proj`` (timm Mlp, tanh-GELU) and the learned null caption ``y_embedding``."""

    hidden_size: int
    caption_channels: int
    max_length: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, y: Array) -> Array:
        self.param(
            "y_embedding",
            lambda k, s, d: jax.random.normal(k, s, d) / math.sqrt(self.caption_channels),
            (self.max_length, self.caption_channels),
            self.param_dtype,
        )
        return Mlp(self.hidden_size, self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="y_proj")(y)


def scale_shift_init(n: int):
    return lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype) / math.sqrt(shape[-1])


class FinalLayer(nn.Module):
    """T2I final layer: ``shift, scale = table + t``; ``linear(modulate(LN(x)))``; ``t`` is pre-``t_block``.

    STDiT3's per-frame ``x_mask`` path (optional): frames whose ``x_mask`` is False use the
    modulation of ``t_zero`` (the embedding of timestep 0) instead. As in the original, that
    alternative is computed from the *already modulated* tokens, ``modulate(LN(modulate(LN(x), t)),
    t_zero)``, then selected per frame (``x`` is ``(B, T·S, C)`` with ``num_frames`` = T).
    """

    out_features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        t: Array,
        x_mask: Array | None = None,
        t_zero: Array | None = None,
        num_frames: int = 1,
    ) -> Array:
        c = x.shape[-1]
        table = self.param("scale_shift_table", scale_shift_init(2), (2, c), self.param_dtype)
        mod = table[None].astype(x.dtype) + t[:, None].astype(x.dtype)  # (B, 2, C)
        shift, scale = mod[:, 0:1], mod[:, 1:2]
        linear = Dense(self.out_features, dtype=self.dtype, param_dtype=self.param_dtype, name="linear")
        if x_mask is None:
            return linear(x, prenorm=(shift, scale))
        x = modulate(layer_norm(x), shift, scale)
        mod0 = table[None].astype(x.dtype) + t_zero[:, None].astype(x.dtype)
        x_zero = modulate(layer_norm(x), mod0[:, 0:1], mod0[:, 1:2])
        return linear(frame_select(x_mask, x, x_zero, num_frames))


def frame_select(x_mask: Array, x: Array, x_zero: Array, num_frames: int) -> Array:
    """Per-frame choice between token tensors ``(B, T·S, C)``: ``x`` where ``x_mask (B, T)`` is True,
    else ``x_zero`` (the original's ``t_mask_select``)."""
    b, n, c = x.shape
    sel = jnp.where(
        x_mask[:, :, None, None], x.reshape(b, num_frames, -1, c), x_zero.reshape(b, num_frames, -1, c)
    )
    return sel.reshape(b, n, c)


def block_modulation(table: Array, t0: Array, dtype) -> list[Array]:
    """adaLN-single: ``table (6, C)`` + ``t0 (B, 6C)`` → [shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp], each ``(B, 1, C)``."""
    c = table.shape[-1]
    mod = table[None].astype(dtype) + t0.reshape(-1, 6, c).astype(dtype)
    return [mod[:, i : i + 1] for i in range(6)]


class TBlock(nn.Module):
    """``t_block``: SiLU → Linear(C → 6C), named ``t_block/1`` like ``t_block.1`` in the originals."""

    hidden_size: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:
        return Dense(6 * self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype, name="1")(nn.silu(t))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (Conv with stride = kernel) on channels-last input.

    ``patch`` is ``(p, p)`` for images ``(B, H, W, C)`` or ``(pt, p, p)`` for videos ``(B, T, H, W, C)``.
    Inputs not divisible by the patch are zero-padded at the end of each axis (STDiT3 behaviour).
    Returns ``(tokens (B, N, hidden), grid)``.
    """

    hidden_size: int
    patch: tuple[int, ...]
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, tuple[int, ...]]:
        spatial = x.shape[1:-1]
        pads = [(0, (-s) % p) for s, p in zip(spatial, self.patch)]
        if any(p[1] for p in pads):
            x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
        conv = nn.Conv(
            self.hidden_size,
            kernel_size=self.patch,
            strides=self.patch,
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )
        y = conv(x)
        grid = y.shape[1:-1]
        return y.reshape(y.shape[0], -1, y.shape[-1]), tuple(grid)


def unpatchify(x: Array, grid: tuple[int, ...], patch: tuple[int, ...], out_channels: int) -> Array:
    """Tokens ``(B, N, prod(patch)*C_out)`` with per-token features ordered ``(*patch, C_out)`` →
    channels-last ``(B, *grid*patch, C_out)``."""
    b = x.shape[0]
    nd = len(grid)
    x = x.reshape(b, *grid, *patch, out_channels)
    # interleave (g0, p0, g1, p1, ...)
    perm = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    x = x.transpose(perm)
    return x.reshape(b, *[g * p for g, p in zip(grid, patch)], out_channels)


def broadcast_rows(v, batch: int) -> Array:
    """A per-row condition ``(B_v,)`` or ``(B_v, k)`` → float32 ``(batch, k)``, tiling when ``B_v`` divides ``batch``."""
    v = jnp.asarray(v, jnp.float32)
    if v.ndim == 1:
        v = v[:, None]
    if v.shape[0] != batch:
        if batch % v.shape[0]:
            raise ValueError(f"condition with {v.shape[0]} rows does not divide batch {batch}")
        v = jnp.tile(v, (batch // v.shape[0], 1))
    return v


def squeeze_caption(y: Array) -> Array:
    """Accept the originals' caption layout ``(B, 1, L, C)`` as well as ``(B, L, C)``."""
    if y.ndim == 4:
        if y.shape[1] != 1:
            raise ValueError(f"caption y must be (B, L, C) or (B, 1, L, C), got {y.shape}")
        y = y[:, 0]
    if y.ndim != 3:
        raise ValueError(f"caption y must be (B, L, C), got {y.shape}")
    return y


# --------------------------------------------------------------------------------------------
# The PixArt block (PixArt-α/Σ blocks, STDiT3 spatial and temporal blocks)
# --------------------------------------------------------------------------------------------


class PixArtBlock(nn.Module):
    """adaLN-single DiT block: gated self-attention, ungated cross-attention, gated MLP.

    ``x`` is ``(B, N, C)`` with ``N = num_frames · S`` tokens, frame-major. Self-attention runs within
    each frame (PixArt: one frame; STDiT3 ``spatial_blocks``) or, with ``temporal``, across the
    frames of each spatial position (STDiT3 ``temporal_blocks``, usually with ``rope``).
    Cross-attention and MLP are per token.

    ``x_mask (B, T)`` / ``t0_zero (B, 6C)`` (STDiT3, optional): frames whose ``x_mask`` is False are
    modulated and gated with the adaLN parameters of ``t0_zero`` (timestep 0) instead of ``t0``.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float
    qk_norm: str | None = None
    temporal: bool = False
    rope: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y, key_mask, t0, num_frames: int = 1, x_mask=None, t0_zero=None):
        c = self.hidden_size
        b, n, _ = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        table = self.param("scale_shift_table", scale_shift_init(6), (6, c), self.param_dtype)
        mods = block_modulation(table, t0, x.dtype)
        if x_mask is None:
            view = unview = lambda a: a  # noqa: E731
        else:
            # per-frame adaLN parameters (B, T, 1, C), applied to x viewed as (B, T, S, C); selecting
            # the parameters is elementwise-identical to the original's selecting of outputs
            zero = block_modulation(table, t0_zero, x.dtype)
            sel = x_mask[:, :, None, None]
            mods = [jnp.where(sel, m[:, None], mz[:, None]) for m, mz in zip(mods, zero)]
            view = lambda a: a.reshape(b, num_frames, -1, c)  # noqa: E731
            unview = lambda a: a.reshape(b, n, c)  # noqa: E731
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods

        # the gated residual adds go through the Dense seam (attn/proj, cross_attn/proj, mlp/fc2: a
        # quantized record fuses them into its GEMM epilogue); per-frame gates (x_mask) stay outside.
        # LayerNorm + adaLN modulate go through it too (prenorm=, the input of attn/qkv and mlp/fc1:
        # per-frame parameters (B, T, 1, C) modulate the frames' consecutive token rows)
        attn = SelfAttention(self.num_heads, qk_norm=self.qk_norm, rope=self.rope, temporal=self.temporal,
                             name="attn", **kw)
        pre = (shift_msa, scale_msa)
        x = attn(x, num_frames, residual=x, gate=gate_msa, prenorm=pre) if x_mask is None else \
            x + unview(gate_msa * view(attn(x, num_frames, prenorm=pre)))
        x = CrossAttention(self.num_heads, name="cross_attn", **kw)(x, y, key_mask, residual=x)
        mlp = Mlp(int(c * self.mlp_ratio), c, name="mlp", **kw)
        pre = (shift_mlp, scale_mlp)
        return mlp(x, residual=x, gate=gate_mlp, prenorm=pre) if x_mask is None else \
            x + unview(gate_mlp * view(mlp(x, prenorm=pre)))

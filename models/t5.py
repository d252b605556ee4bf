"""The T5 v1.1 text encoder (transformers ``T5EncoderModel``) of PixArt-α/Σ and Open-Sora.

``DeepFloyd/t5-v1_1-xxl`` / ``google/t5-v1_1-xxl``: 24 blocks of width 4096, 64 heads of 64, gated-GELU
FFN of 10240 (4.76 B parameters). What sets T5 v1.1 apart from the DiTs' blocks:

* pre-norm blocks with an RMS norm (no mean subtraction, no bias; statistics in float32, eps 1e-6) and
  no bias in any linear;
* attention scores ``q kᵀ`` **without** the ``1/sqrt(d_kv)`` scaling, plus a learned *relative position
  bias*: a ``(num_buckets, num_heads)`` table read through bidirectional log-spaced buckets of the
  distance ``key position - query position``; only block 0 holds the table, its bias is reused by every
  block;
* ``attention_mask`` (1 = token) masks **keys** only (additive ``finfo(float32).min`` as the original);
  padded query rows are computed like any other;
* gated-GELU FFN: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``;
* the token embedding ``shared`` is not scaled.

Flax names mirror the state-dict keys (``encoder/block_3/layer_0/SelfAttention/q`` ↔
``encoder.block.3.layer.0.SelfAttention.q``) so :mod:`conversion.common` maps every key by its one rule.
Every linear is a :class:`models.layers.Dense`, so the quantization core quantizes the encoder like any
model (weight-only int8 lets the XXL encoder sit beside the transformer on one GPU). Its attention does
not go through :func:`models.attention.attend`: the seam has no additive bias and scales the scores;
the encoder is not an attention-quantization target.

Call: ``model.apply({"params": p}, input_ids (B, L) int, attention_mask (B, L) int|bool|None)``
→ the last hidden state ``(B, L, d_model)`` float32 (``dtype=jnp.bfloat16`` computes in bf16 with float32
norms, logits and softmax).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ConfigMixin
from models.layers import Dense, RMSNorm

Dtype = Any
Array = jax.Array

FEED_FORWARD_PROJS: tuple[str, ...] = ("gated-gelu",)  # what the T5 v1.1 releases use (gelu_new = tanh GELU)


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigMixin):
    """``T5Config`` fields that define the encoder (defaults: ``google/t5-v1_1-xxl``)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    # transformers config.json entries that do not change the encoder's inference math
    NOOP_KEYS: ClassVar[frozenset] = frozenset({
        "_name_or_path", "architectures", "classifier_dropout", "decoder_start_token_id", "dense_act_fn",
        "dropout_rate", "dtype", "eos_token_id", "gradient_checkpointing", "initializer_factor", "is_decoder",
        "is_encoder_decoder", "is_gated_act", "model_type", "n_positions", "num_decoder_layers", "output_past",
        "pad_token_id", "scale_decoder_outputs", "task_specific_params", "tie_word_embeddings", "torch_dtype",
        "transformers_version", "use_cache", "bos_token_id", "output_attentions", "output_hidden_states",
        "return_dict", "id2label", "label2id", "use_return_dict",
    })

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in FEED_FORWARD_PROJS:
            raise ValueError(f"T5 feed_forward_proj={self.feed_forward_proj!r} is not supported; "
                             f"allowed: {', '.join(FEED_FORWARD_PROJS)} (T5 v1.1)")
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"T5 {name}={v!r} must be a positive integer")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"T5 relative_attention_num_buckets={self.relative_attention_num_buckets} must be >= 4")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int = 32,
                              max_distance: int = 128) -> np.ndarray:
    """Bidirectional T5 buckets ``(query_length, key_length)`` int32 of ``rel = key pos - query pos``.

    Half of the buckets for ``rel > 0``; within a half, distances below ``n/4`` (``n`` = num_buckets) get
    their own bucket, larger ones log-spaced up to ``max_distance``, the last bucket for everything beyond.
    Computed in float32 and truncated toward zero as the original does (static sizes: numpy)."""
    rel = np.arange(key_length, dtype=np.int64)[None, :] - np.arange(query_length, dtype=np.int64)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    r = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(r.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
                  * np.float32(half - max_exact))
    large = max_exact + np.where(r >= max_exact, scaled, 0).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (out + np.where(r < max_exact, r, large)).astype(np.int32)


def key_mask_bias(attention_mask: Array | None, batch: int, length: int) -> Array | None:
    """``(B, 1, 1, L)`` float32 additive bias: 0 for tokens, ``finfo(float32).min`` for padding."""
    if attention_mask is None:
        return None
    m = jnp.asarray(attention_mask)
    if m.shape != (batch, length):
        raise ValueError(f"attention_mask must be (B, L) = {(batch, length)} like input_ids, got {m.shape}")
    return jnp.where(m.astype(bool), 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)[:, None, None, :]


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention plus an additive bias (relative position + key mask).

    The module with ``has_relative_bias`` (block 0's) owns the bucket table and computes the
    ``(1|B, H, L, L)`` bias, mask included, that every block adds; it returns ``(out, bias)``."""

    num_heads: int
    d_kv: int
    d_model: int
    num_buckets: int = 32
    max_distance: int = 128
    has_relative_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None, mask_bias: Array | None) -> tuple[Array, Array]:
        b, n, _ = x.shape
        if self.has_relative_bias:
            buckets = relative_position_buckets(n, n, self.num_buckets, self.max_distance)
            table = _Table((self.num_buckets, self.num_heads), self.param_dtype, name="relative_attention_bias")()
            bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0).transpose(2, 0, 1)[None]
            if mask_bias is not None:
                bias = bias + mask_bias  # (B, H, L, L)
        elif bias is None:
            raise ValueError("a T5 attention without the relative-bias table needs the bias of block 0")
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.num_heads * self.d_kv
        q, k, v = (Dense(inner, name=name, **kw)(x).reshape(b, n, self.num_heads, self.d_kv) for name in "qkv")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, inner)
        return Dense(self.d_model, name="o", **kw)(out), bias


class _SelfAttentionLayer(nn.Module):
    """``layer.0``: ``x + SelfAttention(layer_norm(x))``."""

    config: T5Config
    has_relative_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None, mask_bias: Array | None) -> tuple[Array, Array]:
        cfg = self.config
        h = RMSNorm(cfg.layer_norm_epsilon, self.param_dtype, name="layer_norm")(x)
        out, bias = T5Attention(cfg.num_heads, cfg.d_kv, cfg.d_model, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, self.has_relative_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="SelfAttention")(h, bias, mask_bias)
        return x + out.astype(x.dtype), bias


class _GatedGelu(nn.Module):
    """``DenseReluDense``: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``."""

    config: T5Config
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Dense(cfg.d_ff, activation="gelu_tanh", name="wi_0", **kw)(x)
        return Dense(cfg.d_model, name="wo", **kw)(gate * Dense(cfg.d_ff, name="wi_1", **kw)(x))


class _FeedForwardLayer(nn.Module):
    """``layer.1``: ``x + DenseReluDense(layer_norm(x))``."""

    config: T5Config
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = RMSNorm(self.config.layer_norm_epsilon, self.param_dtype, name="layer_norm")(x)
        out = _GatedGelu(self.config, dtype=self.dtype, param_dtype=self.param_dtype, name="DenseReluDense")(h)
        return x + out.astype(x.dtype)


class T5Block(nn.Module):
    """One encoder block (``block.i``): self-attention layer, feed-forward layer."""

    config: T5Config
    has_relative_bias: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, bias: Array | None, mask_bias: Array | None) -> tuple[Array, Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x, bias = _SelfAttentionLayer(self.config, self.has_relative_bias, name="layer_0", **kw)(x, bias, mask_bias)
        return _FeedForwardLayer(self.config, name="layer_1", **kw)(x), bias


class _Stack(nn.Module):
    """``encoder``: ``block_i`` (block 0 computes the bias every block adds) + ``final_layer_norm``."""

    config: T5Config
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask_bias: Array | None) -> Array:
        cfg = self.config
        bias = None
        for i in range(cfg.num_layers):
            x, bias = T5Block(cfg, i == 0, dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}")(
                x, bias, mask_bias)
        return RMSNorm(cfg.layer_norm_epsilon, self.param_dtype, name="final_layer_norm")(x)


class _Table(nn.Module):
    """A lookup table stored as ``<name>/weight`` (torch ``<name>.weight``), ``N(0, 1)`` init."""

    shape: tuple[int, int]
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> Array:
        return self.param("weight", nn.initializers.normal(1.0), self.shape, self.param_dtype)


class T5Encoder(nn.Module):
    """The T5 v1.1 encoder with its token embedding (``shared``) — see the module docstring."""

    config: T5Config
    dtype: Dtype = jnp.float32  # compute dtype (bf16 on GPU)
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        cfg = self.config
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"T5 input_ids must be integer (B, L), got {ids.dtype} {ids.shape}")
        b, n = ids.shape
        table = _Table((cfg.vocab_size, cfg.d_model), self.param_dtype, name="shared")()
        x = jnp.take(table, ids, axis=0).astype(self.dtype)
        out = _Stack(cfg, dtype=self.dtype, param_dtype=self.param_dtype, name="encoder")(
            x, key_mask_bias(attention_mask, b, n))
        return out.astype(jnp.float32)

    def init_inputs(self, batch: int = 1, length: int = 8) -> dict:
        """Shape-only example inputs for ``jax.eval_shape(model.init, ...)`` (and smoke tests)."""
        return dict(input_ids=jnp.zeros((batch, length), jnp.int32),
                    attention_mask=jnp.ones((batch, length), jnp.int32))


__all__ = ["FEED_FORWARD_PROJS", "T5Config", "T5Encoder", "key_mask_bias", "relative_position_buckets"]

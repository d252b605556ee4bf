"""transformers ``T5EncoderModel`` folders (``text_encoder/``: ``config.json`` + ``model.safetensors`` or
sharded weights with an index json, as ``DeepFloyd/t5-v1_1-xxl`` ships them) → :class:`models.t5.T5Encoder`.

Configuration: the XXL release < what the shapes determine (vocabulary, width, heads, head size, FFN
width, blocks, buckets) < ``config.json`` < the caller's ``config`` (transformers ``T5Config`` names).
What the shapes cannot tell (``relative_attention_max_distance``, ``layer_norm_epsilon``) is assumed
with one warning when no config gives it.

Keys: validated in the original naming, every missing / unexpected / mis-shaped key named. The token
embedding is ``shared.weight``; ``encoder.embed_tokens.weight`` is the same (tied) tensor: it is used
when ``shared.weight`` is absent and ignored otherwise. A whole ``T5ForConditionalGeneration`` file
(``decoder.*``, ``lm_head.weight``) converts too: the encoder ignores those, as ``T5EncoderModel`` does.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

from conversion.common import (
    assumed_note,
    count_blocks,
    emit_notes,
    expected_state_shapes,
    param_shapes,
    state_to_params,
    validate_state_dict,
)
from conversion.errors import ConversionError
from conversion.io import StateDict
from models.t5 import FEED_FORWARD_PROJS, T5Config, T5Encoder

ARCH = "t5-encoder"
_SHARED, _TIED = "shared.weight", "encoder.embed_tokens.weight"
# tensors of a full encoder-decoder file that the encoder does not use
_IGNORABLE = (r"decoder\..*", r"lm_head\.weight", re.escape(_TIED))
# the activation of the gated FFN each feed_forward_proj implies (transformers' dense_act_fn)
_ACT_OF_PROJ = {"gated-gelu": "gelu_new"}


def _from_shapes(state: StateDict) -> dict[str, Any]:
    """Every config value the tensor shapes of an original-named state dict determine."""
    out: dict[str, Any] = {}
    emb = state.get(_SHARED, state.get(_TIED))
    if emb is not None and emb.ndim == 2:
        out.update(vocab_size=int(emb.shape[0]), d_model=int(emb.shape[1]))
    layers = count_blocks(state, "encoder.block")
    if layers:
        out["num_layers"] = layers
    rel = state.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if rel is not None and rel.ndim == 2:
        out.update(relative_attention_num_buckets=int(rel.shape[0]), num_heads=int(rel.shape[1]))
    q = state.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    if q is not None and q.ndim == 2 and out.get("num_heads") and q.shape[0] % out["num_heads"] == 0:
        out["d_kv"] = int(q.shape[0]) // out["num_heads"]
    wi = state.get("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    if wi is not None and wi.ndim == 2:
        out["d_ff"] = int(wi.shape[0])
    return out


def t5_config(state: StateDict, config: dict | None, source: str = "checkpoint",
              notes: list[Warning] | None = None) -> T5Config:
    """The encoder's :class:`T5Config` from the release defaults, the shapes and ``config`` (a transformers
    ``config.json`` dict and/or the caller's overrides); unsupported settings are a one-line
    :class:`ConversionError`, unknown keys one warning."""
    if any(re.fullmatch(r"encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wi\.weight", k) for k in state):
        raise ConversionError(f"{source}: a non-gated T5 FFN (DenseReluDense.wi, original T5 / feed_forward_proj "
                              f"'relu') is not supported; allowed: {', '.join(FEED_FORWARD_PROJS)} (T5 v1.1)")
    fields = dataclasses.asdict(T5Config())
    fields.update(_from_shapes(state))
    cfg = dict(config or {})
    names = set(fields)
    unknown = sorted(k for k in cfg if k not in names and k not in T5Config.NOOP_KEYS)
    if unknown:
        warnings.warn(f"T5 config keys not understood and ignored: {unknown}", stacklevel=3)
    proj = cfg.get("feed_forward_proj", fields["feed_forward_proj"])
    act = cfg.get("dense_act_fn")
    if proj in _ACT_OF_PROJ and act is not None and act != _ACT_OF_PROJ[proj]:
        raise ConversionError(f"{source}: dense_act_fn={act!r} is not supported with {proj}; allowed: "
                              f"{_ACT_OF_PROJ[proj]!r}")
    if cfg.get("is_decoder"):
        raise ConversionError(f"{source}: config is_decoder=true: a T5 decoder, not an encoder (arch {ARCH})")
    fields.update({k: v for k, v in cfg.items() if k in names})
    assumed = {k: fields[k] for k in ("relative_attention_max_distance", "layer_norm_epsilon") if k not in cfg}
    pending = assumed_note(source, assumed, "not in the weights")
    try:
        out = T5Config(**fields)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{source}: {e}") from None
    if notes is None:
        emit_notes(pending)
    else:
        notes += pending
    return out


def _original_key(key: str) -> str:
    """The generic rule names ``wi_0`` ``wi.0``; the original names the two gated inputs ``wi_0`` / ``wi_1``."""
    return re.sub(r"\.DenseReluDense\.wi\.(\d)\.", r".DenseReluDense.wi_\1.", key)


def convert(state: StateDict, arch: str, config: dict | None, source: str) -> tuple[T5Encoder, dict]:
    """The converter of the ``t5`` component (``conversion.CONVERTERS``): a ``T5EncoderModel`` state dict →
    ``(model, numpy params)``."""
    if arch != ARCH:
        raise ConversionError(f"the T5 converter handles arch {ARCH!r}, not {arch!r}")
    notes: list[Warning] = []
    cfg = t5_config(state, config, source, notes)
    model = T5Encoder(cfg)
    shapes = param_shapes(model, model.init_inputs())
    table = {_original_key(k): (k, shape) for k, (_, shape) in expected_state_shapes(shapes).items()}
    state = dict(state)
    if _SHARED not in state and _TIED in state:
        state[_SHARED] = state[_TIED]
    validate_state_dict(state, {k: s for k, (_, s) in table.items()}, ignorable=_IGNORABLE, source=source,
                        hint=f"arch {ARCH}")
    params = state_to_params({table[k][0]: state[k] for k in table}, shapes, source=source, hint=f"arch {ARCH}")
    emit_notes(notes)
    return model, params


__all__ = ["ARCH", "convert", "t5_config"]

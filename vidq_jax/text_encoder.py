"""Prompts → caption features with the releases' own T5 v1.1 encoder and tokenizer, in JAX.

* :func:`load_tokenizer` reads a release's ``tokenizer/`` folder: ``tokenizer.json`` through the
  ``tokenizers`` package, or the sentencepiece ``spiece.model`` (what ``DeepFloyd/t5-v1_1-xxl`` and the
  PixArt repos ship) through ``sentencepiece`` — both optional, in the ``generate`` extra. A prompt
  becomes its pieces, truncated to ``max_length - 1``, then EOS (``</s>``, id 1) and padding (``<pad>``,
  id 0) up to ``max_length``, with the 0/1 attention mask: what the T5 tokenizer gives with
  ``padding="max_length", truncation=True`` (120 tokens for PixArt-α / Open-Sora 1.0, 300 for PixArt-Σ
  / Open-Sora 1.2).
* :class:`TextEncoder` holds the tokenizer and the converted :class:`models.t5.T5Encoder`;
  ``encode(prompts)`` returns ``(y (B, L, d_model) float32, mask (B, L) int32)`` — the ``y``/``mask`` of
  the DiTs. Prompts are stripped and lower-cased first, as the diffusers PixArt pipelines do
  (``lowercase=False`` keeps the case).
* :func:`load_text_encoder` converts a ``text_encoder/`` folder (``conversion``, arch ``t5-encoder``),
  optionally casts it (bf16) and quantizes it weight-only through the project's quantization core
  (preset ``w8-only``: int8 per-channel weights, no calibration data), so the 4.7 B XXL encoder takes
  ~4.9 GB beside the transformer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vidq_jax.errors import VidqError

EXTRA = "generate"
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "spiece.model")
PAD_ID, EOS_ID = 0, 1  # the T5 vocabulary's <pad> and </s>


def _missing(package: str, file: Path) -> VidqError:
    return VidqError(f"{file}: reading it needs the '{package}' package of the {EXTRA} extra: "
                     f"pip install 'vidq-jax[{EXTRA}]'")


class Tokenizer:
    """T5-style fixed-length tokenization around a piece encoder ``encode(text) -> list[int]``
    (without special tokens); ``eos_id`` / ``pad_id``: the ids of ``</s>`` / ``<pad>``."""

    def __init__(self, encode, *, eos_id: int = EOS_ID, pad_id: int = PAD_ID, source: str = ""):
        self._encode = encode
        self.eos_id, self.pad_id, self.source = int(eos_id), int(pad_id), source

    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids (B, max_length) int32, attention_mask (B, max_length) int32)``."""
        if isinstance(prompts, str):
            raise TypeError("the tokenizer takes a list of prompts, not a string")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise VidqError(f"max_length={max_length!r}: must be a positive number of tokens (T5 releases: 120 or 300)")
        ids = np.full((len(prompts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), max_length), np.int32)
        for i, text in enumerate(prompts):
            pieces = [*list(self._encode(text))[: max_length - 1], self.eos_id]
            ids[i, : len(pieces)] = pieces
            mask[i, : len(pieces)] = 1
        return ids, mask


def _special_id(lookup, token: str, default: int) -> int:
    found = lookup(token)
    return default if found is None or found < 0 else int(found)


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a release's ``tokenizer/`` folder (or the file itself): ``tokenizer.json``
    (``tokenizers``) preferred, else ``spiece.model`` (``sentencepiece``). One-line :class:`VidqError`
    naming the folder and the files looked for, or the extra to install."""
    path = Path(folder)
    if path.is_dir():
        found = next((path / f for f in TOKENIZER_FILES if (path / f).is_file()), None)
        if found is None:
            raise VidqError(f"tokenizer {path}: holds none of {', '.join(TOKENIZER_FILES)}")
        path = found
    elif not path.is_file():
        raise VidqError(f"tokenizer {path}: no such file or folder")
    if path.suffix == ".json":
        try:
            import tokenizers
        except ImportError:
            raise _missing("tokenizers", path) from None
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises its own exception type
            raise VidqError(f"tokenizer {path}: not a readable tokenizer.json ({' '.join(str(e).split())[:200]})") from None
        return Tokenizer(lambda text: tok.encode(text, add_special_tokens=False).ids,
                         eos_id=_special_id(tok.token_to_id, "</s>", EOS_ID),
                         pad_id=_special_id(tok.token_to_id, "<pad>", PAD_ID), source=str(path))
    try:
        import sentencepiece
    except ImportError:
        raise _missing("sentencepiece", path) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise VidqError(f"tokenizer {path}: not a readable sentencepiece model ({' '.join(str(e).split())[:200]})") from None
    return Tokenizer(sp.EncodeAsIds, eos_id=EOS_ID if sp.eos_id() < 0 else sp.eos_id(),
                     pad_id=PAD_ID if sp.pad_id() < 0 else sp.pad_id(), source=str(path))


class TextEncoder:
    """A tokenizer + a T5 encoder (``model``, ``params``: float or quantized) at ``max_length`` tokens."""

    def __init__(self, tokenizer: Tokenizer, model, params: Any, max_length: int = 120):
        self.tokenizer, self.model, self.params, self.max_length = tokenizer, model, params, int(max_length)

    def tokenize(self, prompts: Sequence[str], *, lowercase: bool = True) -> tuple[np.ndarray, np.ndarray]:
        texts = [p.strip().lower() if lowercase else p.strip() for p in prompts]
        ids, mask = self.tokenizer(texts, self.max_length)
        vocab = self.model.config.vocab_size
        if ids.size and int(ids.max()) >= vocab:
            raise VidqError(f"tokenizer {self.tokenizer.source}: token id {int(ids.max())} is outside the text "
                            f"encoder's vocabulary of {vocab}: the tokenizer and text_encoder folders do not belong "
                            "together")
        return ids, mask

    def encode(self, prompts: Sequence[str], *, lowercase: bool = True) -> tuple[jax.Array, jax.Array]:
        """``(y (B, max_length, d_model) float32, mask (B, max_length) int32)`` of the prompts."""
        ids, mask = self.tokenize(prompts, lowercase=lowercase)
        return _encode_fn(self.model)(self.params, jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)


@functools.lru_cache(maxsize=8)
def _encode_fn(model):
    """The jitted encoder call of ``model`` (one per equal module: reloading a folder does not recompile)."""
    return jax.jit(lambda params, ids, mask: model.apply({"params": params}, ids, mask))


def quantize_text_encoder(model, params: Any, preset: str = "w8-only") -> Any:
    """``params`` of the T5 encoder ``model`` quantized with a weight-only preset (no calibration data, e.g.
    ``w8-only``); any other preset is a one-line :class:`VidqError`."""
    from vidq_jax.quant import QuantConfig, quantize_params
    from vidq_jax.quant.tree import dense_paths

    config = QuantConfig.preset(preset)
    layers = [lq for lq in config.resolve_all(dense_paths(params)).values() if lq is not None]
    if not layers or any(lq.needs_calibration or lq.a_bits is not None for lq in layers):
        raise VidqError(f"text-encoder quantization {preset!r}: the T5 encoder is quantized weight-only, without "
                        "calibration data; use a weight-only preset such as 'w8-only'")
    return quantize_params(params, None, model=model, config=config)


def load_text_encoder(folder: str | os.PathLike, tokenizer: str | os.PathLike | Tokenizer, *, max_length: int = 120,
                      dtype: Any = None, quantize: str | None = None, config: dict | None = None) -> TextEncoder:
    """Convert a ``text_encoder/`` folder (transformers ``T5EncoderModel``) and pair it with ``tokenizer``
    (a folder, a file or a :class:`Tokenizer`). ``dtype`` (e.g. ``jnp.bfloat16``): params and compute
    dtype; ``quantize``: a weight-only preset (``"w8-only"``)."""
    from conversion import load_checkpoint

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    model, params = load_checkpoint(folder, "t5-encoder", config, dtype=dtype)
    if dtype is not None:
        model = model.clone(dtype=dtype)
    if quantize is not None:
        params = quantize_text_encoder(model, params, quantize)
    return TextEncoder(tok, model, params, max_length)


__all__ = ["EXTRA", "TOKENIZER_FILES", "TextEncoder", "Tokenizer", "load_text_encoder", "load_tokenizer",
           "quantize_text_encoder"]

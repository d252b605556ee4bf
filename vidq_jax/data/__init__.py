"""Training / evaluation data of the demo models, all from PyPI wheels (no downloads at run time).

* :mod:`~vidq_jax.data.emoji` — Twemoji images + captions (text-to-image).
* :mod:`~vidq_jax.data.animals` — animal-mnist silhouettes (scikit-learn digits as fallback).
* :mod:`~vidq_jax.data.video` — procedural clips of a sprite moving (text-to-video).
* :mod:`~vidq_jax.data.text` — MiniLM per-token caption features, shipped prompt banks.
"""

from vidq_jax.data.text import CAPTION_CHANNELS, MAX_LENGTH, TextExtraMissing, encode_prompts, load_prompt_bank

__all__ = ["CAPTION_CHANNELS", "MAX_LENGTH", "TextExtraMissing", "encode_prompts", "load_prompt_bank"]

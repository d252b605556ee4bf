"""A synthetic release folder in the diffusers PixArt layout, assembled from the tiny fixture checkpoints
(``transformer/`` pixart_diffusers, ``vae/`` sd_vae_kl, ``text_encoder/`` t5_v1_1_encoder) plus a tiny
word-level ``tokenizer/tokenizer.json`` made here (``from tests.tiny_release import ...``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

WORDS = ("a photo of an astronaut riding horse on the moon cat dog red blue sits mat in garden "
         "painting sunset over mountains robot reading book").split()
PARTS = {"transformer": "pixart_diffusers/transformer", "vae": "sd_vae_kl/vae",
         "text_encoder": "t5_v1_1_encoder/text_encoder"}


def write_tokenizer(folder: Path) -> Path:
    """``folder/tokenizer.json``: a word-level tokenizer with the T5 special ids (<pad> 0, </s> 1, <unk> 2)."""
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package (generate extra) is not installed")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def make_release(root: Path, parts: tuple[str, ...] = ("transformer", "vae", "text_encoder", "tokenizer")) -> Path:
    """The release folder ``root`` holding ``parts``; skips the test when a fixture is absent."""
    from conversion.fixtures import default_fixtures_dir

    fix = Path(default_fixtures_dir())
    root.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if part == "tokenizer":
            write_tokenizer(root / "tokenizer")
            continue
        src = fix / PARTS[part]
        if not src.is_dir():
            pytest.skip(f"fixture folder {src} not available")
        shutil.copytree(src, root / part)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    return root

"""The prompt banks shipped in ``assets/`` (MiniLM features, so the demo needs no torch).

* ``t2i_prompts.npz`` — the demo prompts of the text-to-image model (:data:`T2I_DEMO_PROMPTS`).
* ``t2i_eval.npz`` — 100 emoji captions (every 40th emoji) with their category, for the quality
  benchmark (conditional accuracy / FD of generated samples).
* ``t2v_prompts.npz`` — all 40 captions of the video data ("a cat moving left", ...) with the
  animal and direction labels (demo prompts and benchmark).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidq_jax.data.text import ASSETS_DIR, save_prompt_bank

__all__ = ["write_prompt_banks"]


def _add(path: Path, **arrays) -> None:
    with np.load(path) as z:
        data = dict(z)
    data.update(arrays)
    np.savez_compressed(path, **data)


def write_prompt_banks(out_dir: Path | None = None) -> list[Path]:
    from vidq_jax.data.animals import ANIMAL_CLASSES
    from vidq_jax.data.emoji import load_emoji
    from vidq_jax.data.video import DIRECTIONS, video_caption
    from vidq_jax.train.configs import T2I_DEMO_PROMPTS

    out = Path(out_dir or ASSETS_DIR)
    paths = [save_prompt_bank(out / "t2i_prompts.npz", list(T2I_DEMO_PROMPTS))]
    emoji = load_emoji(32)
    idx = np.arange(0, len(emoji), 40)
    p = save_prompt_bank(out / "t2i_eval.npz", [emoji.captions[i] for i in idx])
    _add(p, category=emoji.categories[idx].astype(np.int8), stems=np.array([emoji.stems[i] for i in idx]))
    paths.append(p)
    caps, animal, direction = [], [], []
    for a, name in enumerate(ANIMAL_CLASSES):
        for d, dname in enumerate(DIRECTIONS):
            caps.append(video_caption(name, dname))
            animal.append(a)
            direction.append(d)
    p = save_prompt_bank(out / "t2v_prompts.npz", caps)
    _add(p, animal=np.array(animal, np.int8), direction=np.array(direction, np.int8))
    paths.append(p)
    return paths
